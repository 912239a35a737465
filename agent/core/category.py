"""Which kind of image a reference names, as Docker Hub's Image Access Management sees it.

Categories are decided on the policy's hub view of a reference (all Docker Hub aliases
folded into ``docker.io``), so ``registry-1.docker.io/someuser/tool`` is community too.
"""

from __future__ import annotations

from enum import StrEnum

from agent.core.policy.document import HubSettings
from agent.core.reference import DEFAULT_DOMAIN, Reference

__all__ = ["Category", "classify"]


class Category(StrEnum):
    ORG = "org"
    OFFICIAL = "official"
    VERIFIED_PUBLISHER = "verified_publisher"
    SPONSORED_OSS = "sponsored_oss"
    COMMUNITY = "community"
    REGISTRY = "registry"

    @property
    def label(self) -> str:
        """How people call the category, for messages."""
        return _TITLES[self]


_TITLES = {
    Category.ORG: "your organisation's Docker Hub images",
    Category.OFFICIAL: "Docker Official Images",
    Category.VERIFIED_PUBLISHER: "Docker Verified Publisher images",
    Category.SPONSORED_OSS: "Docker-Sponsored Open Source images",
    Category.COMMUNITY: "Docker Hub community images",
    Category.REGISTRY: "images from registries other than Docker Hub",
}


def classify(hub: HubSettings, ref: Reference) -> Category:
    """Classify a reference already in its hub view (see ``reference.hub_view``).

    ``docker.io/library/x`` is official only with exactly one component below
    ``library``: Docker Hub has no nested official repositories, so anything deeper is
    not vouched for and falls to community.
    """
    if ref.domain != DEFAULT_DOMAIN:
        return Category.REGISTRY
    namespace, _, rest = ref.path.partition("/")
    if namespace in hub.org_namespaces:
        return Category.ORG
    if namespace == "library" and rest and "/" not in rest:
        return Category.OFFICIAL
    if namespace in hub.verified_publisher_namespaces:
        return Category.VERIFIED_PUBLISHER
    if namespace in hub.sponsored_oss_namespaces:
        return Category.SPONSORED_OSS
    return Category.COMMUNITY
