"""The tray's icons, drawn with QPainter: a shield per state, told apart by shape as well
as colour (a tick, an eye, an exclamation mark, a cross), so that they read for people
who do not see the colours and on any panel.

Legible on dark and light panels: each shield has a dark outline inside a light halo,
and its glyph is white on the coloured fill. Crisp at HiDPI: the icon holds a pixmap
drawn at each common size (16 to 256 px) and Qt picks the one for the requested size
times the screen's device pixel ratio; nothing is scaled from a small bitmap.
"""

from __future__ import annotations

from typing import Final

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap

from ui.model import IconState

__all__ = ["COLORS", "SIZES", "icon_for", "pixmap_for"]

SIZES: Final = (16, 20, 22, 24, 32, 40, 44, 48, 64, 96, 128, 256)
COLORS: Final = {
    IconState.OK: QColor("#2e8540"),
    IconState.MONITOR: QColor("#1f6fb5"),
    IconState.ATTENTION: QColor("#d9822b"),
    IconState.DOWN: QColor("#6b6f76"),
}
OUTLINE: Final = QColor("#1b1b1f")
HALO: Final = QColor(255, 255, 255, 170)

_cache: dict[IconState, QIcon] = {}


def icon_for(state: IconState) -> QIcon:
    """The icon for ``state`` (built once per state)."""
    icon = _cache.get(state)
    if icon is None:
        icon = QIcon()
        for size in SIZES:
            icon.addPixmap(pixmap_for(state, size))
        _cache[state] = icon
    return icon


def pixmap_for(state: IconState, size: int, device_pixel_ratio: float = 1.0) -> QPixmap:
    """``state``'s shield, ``size`` logical pixels square at ``device_pixel_ratio``."""
    physical = max(1, round(size * device_pixel_ratio))
    pixmap = QPixmap(physical, physical)
    pixmap.setDevicePixelRatio(device_pixel_ratio)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    try:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.scale(physical / 100.0 / device_pixel_ratio, physical / 100.0 / device_pixel_ratio)
        _draw(painter, state)
    finally:
        painter.end()
    return pixmap


def _shield() -> QPainterPath:
    """A shield in a 100 x 100 box."""
    path = QPainterPath()
    path.moveTo(50, 6)
    path.lineTo(88, 19)
    path.cubicTo(88, 56, 74, 80, 50, 94)
    path.cubicTo(26, 80, 12, 56, 12, 19)
    path.closeSubpath()
    return path


def _draw(painter: QPainter, state: IconState) -> None:
    shield = _shield()
    painter.setPen(
        QPen(HALO, 12, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin)
    )
    painter.drawPath(shield)
    painter.setPen(
        QPen(OUTLINE, 6, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin)
    )
    painter.setBrush(COLORS[state])
    painter.drawPath(shield)
    glyph = QPen(
        QColor("white"),
        11,
        Qt.PenStyle.SolidLine,
        Qt.PenCapStyle.RoundCap,
        Qt.PenJoinStyle.RoundJoin,
    )
    painter.setPen(glyph)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    if state is IconState.OK:
        tick = QPainterPath(QPointF(32, 50))
        tick.lineTo(45, 63)
        tick.lineTo(69, 36)
        painter.drawPath(tick)
    elif state is IconState.MONITOR:
        eye = QPainterPath(QPointF(27, 48))
        eye.quadTo(50, 24, 73, 48)
        eye.quadTo(50, 72, 27, 48)
        painter.setPen(QPen(QColor("white"), 7))
        painter.drawPath(eye)
        painter.setBrush(QColor("white"))
        painter.drawEllipse(QRectF(43, 41, 14, 14))
    elif state is IconState.ATTENTION:
        painter.drawLine(QPointF(50, 28), QPointF(50, 55))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor("white"))
        painter.drawEllipse(QRectF(44, 64, 12, 12))
    else:
        painter.drawLine(QPointF(36, 34), QPointF(64, 62))
        painter.drawLine(QPointF(64, 34), QPointF(36, 62))
