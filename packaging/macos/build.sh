#!/usr/bin/env bash
# Build Pullgate's signed, notarised macOS installer on a macOS runner (docs/deploy/macos.md).
# Not runnable on Linux: PyInstaller freezes for the machine it runs on, and codesign,
# pkgbuild, productbuild, notarytool and stapler are Apple's.
#
#   DEVELOPER_ID_APP="Developer ID Application: Acme Corp (ABCDE12345)" \
#   DEVELOPER_ID_INSTALLER="Developer ID Installer: Acme Corp (ABCDE12345)" \
#   NOTARY_PROFILE=pullgate-notary \
#   bash packaging/macos/build.sh [--version 0.1.0] [--no-notarize]
#
# NOTARY_PROFILE names credentials stored once with
#   xcrun notarytool store-credentials pullgate-notary --apple-id ... --team-id ABCDE12345
# (or an App Store Connect API key: --key, --key-id, --issuer). Both identities must be
# in the keychain (on CI: a temporary keychain imported from the runner's secrets).
#
# Output under build/macos/ (gitignored): dist/Pullgate.app (frozen), root/ and scripts/
# (staged, the app signed in place), Pullgate-component.pkg, Pullgate-VERSION.pkg (the
# signed, notarised and stapled product to upload to the MDM).
set -euo pipefail

cd "$(dirname "$0")/../.."
VENV=${PULLGATE_VENV:-.venv}
OUT=build/macos
VERSION=$("${VENV}/bin/python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
NOTARIZE=yes
while [[ $# -gt 0 ]]; do
    case $1 in
    --version) VERSION=$2; shift 2 ;;
    --no-notarize) NOTARIZE=no; shift ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [[ $(uname -s) != Darwin ]]; then
    echo "build.sh: builds the macOS installer on macOS only (see docs/deploy/macos.md)" >&2
    exit 2
fi
: "${DEVELOPER_ID_APP:?set DEVELOPER_ID_APP to the Developer ID Application identity}"
: "${DEVELOPER_ID_INSTALLER:?set DEVELOPER_ID_INSTALLER to the Developer ID Installer identity}"
if [[ ${NOTARIZE} == yes ]]; then
    : "${NOTARY_PROFILE:?set NOTARY_PROFILE (xcrun notarytool store-credentials), or pass --no-notarize}"
fi
ARCH=$(uname -m)
ENTITLEMENTS=packaging/macos/entitlements.plist

# 1. Freeze: the onedir bundle as Pullgate.app, for this machine's architecture.
rm -rf "${OUT}"
PULLGATE_VERSION=${VERSION} "${VENV}/bin/python" -m PyInstaller --noconfirm --clean \
    --distpath "${OUT}/dist" --workpath "${OUT}/work" packaging/macos/pullgate.spec

# 2. Stage the payload (app, LaunchDaemon, LaunchAgent) and the pkg's scripts; the
#    uninstaller goes into the app before it is signed.
"${VENV}/bin/python" packaging/macos/stage.py --app "${OUT}/dist/Pullgate.app" --out "${OUT}"
APP="${OUT}/root/Applications/Pullgate.app"

# 3. Sign inside out with the hardened runtime and a secure timestamp: every Mach-O
#    library and executable in the bundle, then the app (which seals the rest). No
#    --deep: it would sign everything with the app's entitlements.
sign() {
    codesign --force --timestamp --options runtime --sign "${DEVELOPER_ID_APP}" "$@"
}
while IFS= read -r -d '' file; do
    if file -b "${file}" | grep -q 'Mach-O'; then
        sign "${file}"
    fi
done < <(find "${APP}/Contents/Frameworks" "${APP}/Contents/Resources" -type f -print0)
sign --entitlements "${ENTITLEMENTS}" "${APP}/Contents/MacOS/pullgate"
sign --entitlements "${ENTITLEMENTS}" "${APP}/Contents/MacOS/pullgate-tray"
sign --entitlements "${ENTITLEMENTS}" "${APP}"
codesign --verify --strict --deep --verbose=2 "${APP}"

# 4. The component package (payload + scripts), then the signed product archive.
pkgbuild --root "${OUT}/root" --component-plist packaging/macos/component.plist \
    --scripts "${OUT}/scripts" --identifier com.pullgate.pkg --version "${VERSION}" \
    --install-location / "${OUT}/Pullgate-component.pkg"
sed -e "s/@VERSION@/${VERSION}/g" -e "s/@ARCH@/${ARCH}/g" packaging/macos/distribution.xml \
    >"${OUT}/distribution.xml"
PRODUCT="${OUT}/Pullgate-${VERSION}.pkg"
productbuild --distribution "${OUT}/distribution.xml" --package-path "${OUT}" \
    --sign "${DEVELOPER_ID_INSTALLER}" --timestamp "${PRODUCT}"
pkgutil --check-signature "${PRODUCT}"

# 5. Notarise (Apple scans the pkg and everything in it), staple the ticket so
#    Gatekeeper accepts the pkg offline, and check it as Gatekeeper will.
if [[ ${NOTARIZE} == yes ]]; then
    xcrun notarytool submit "${PRODUCT}" --keychain-profile "${NOTARY_PROFILE}" --wait
    xcrun stapler staple "${PRODUCT}"
    xcrun stapler validate "${PRODUCT}"
    spctl --assess --type install --verbose=2 "${PRODUCT}"
fi
echo "build.sh: ${PRODUCT}"
