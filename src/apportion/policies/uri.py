"""Policy URIs: ``{name}:{version}-{release_tag}`` (the seed's format), e.g. ``binpack:1.0-stable``.

``name`` may hold letters, digits, ``.``, ``_`` and ``-``; ``version`` letters,
digits, ``.`` and ``_``; ``release_tag`` letters, digits, ``.``, ``_`` and ``-``.
The first ``-`` after the ``:`` ends the version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from apportion.errors import InvalidRequest

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._]{0,63}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
URI_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127}):"
    r"(?P<version>[A-Za-z0-9][A-Za-z0-9._]{0,63})-(?P<tag>[A-Za-z0-9][A-Za-z0-9._-]{0,63})$"
)


_PARSED: dict[str, PolicyURI] = {}


@dataclass(frozen=True, order=True)
class PolicyURI:
    name: str
    version: str
    release_tag: str

    def __str__(self) -> str:
        return f"{self.name}:{self.version}-{self.release_tag}"

    @classmethod
    def parse(cls, text: object, *, path: str = "policy_rule_uri") -> PolicyURI:
        """Parse and check a URI; :class:`InvalidRequest` naming ``path`` otherwise."""
        if isinstance(text, str):
            cached = _PARSED.get(text)
            if cached is not None:
                return cached
        if not isinstance(text, str) or not text:
            raise InvalidRequest(
                f"{path} must be a non-empty string like 'binpack:1.0-stable'", path=path
            )
        match = URI_RE.match(text)
        if match is None:
            raise InvalidRequest(
                f"{path} {text!r} is not a policy URI; the form is name:version-release_tag, "
                "e.g. 'binpack:1.0-stable'",
                path=path,
            )
        uri = cls(match["name"], match["version"], match["tag"])
        if len(_PARSED) < 4096:  # every request names a URI; most name the same few
            _PARSED[text] = uri
        return uri

    @classmethod
    def of(cls, name: str, version: str, release_tag: str, *, path: str = "record") -> PolicyURI:
        """Build from a record's parts, checking each."""
        for field, value, pattern in (
            ("name", name, NAME_RE),
            ("version", version, VERSION_RE),
            ("release_tag", release_tag, TAG_RE),
        ):
            if not pattern.match(value):
                raise InvalidRequest(
                    f"{path}.{field} {value!r} must match {pattern.pattern}",
                    path=f"{path}.{field}",
                )
        return cls(name, version, release_tag)
