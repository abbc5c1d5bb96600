"""The policy store record (CONTRACTS §3, the seed's policy DB fields)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from apportion.policies.uri import NAME_RE, TAG_RE, VERSION_RE, PolicyURI
from apportion.validation import invalid_from_pydantic


class ManagementCommand(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    description: str = ""
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")


class PolicyRecord(BaseModel):
    """What ``POST /policies`` takes in its ``record`` part, and what the store answers."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=NAME_RE.pattern)
    version: str = Field(pattern=VERSION_RE.pattern)
    release_tag: str = Field(pattern=TAG_RE.pattern)
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    type: Literal["python_class_v1"] = "python_class_v1"
    policy_settings: dict[str, Any] = Field(default_factory=dict)
    policy_parameters: dict[str, Any] = Field(default_factory=dict)
    policy_input_schema: dict[str, Any] = Field(default_factory=dict)
    policy_output_schema: dict[str, Any] = Field(default_factory=dict)
    policy_settings_schema: dict[str, Any] = Field(default_factory=dict)
    policy_parameters_schema: dict[str, Any] = Field(default_factory=dict)
    management_commands_schema: list[ManagementCommand] = Field(default_factory=list)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        # The seed stores tags as a comma-separated string; accept both.
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @property
    def uri(self) -> PolicyURI:
        return PolicyURI(self.name, self.version, self.release_tag)

    @classmethod
    def parse(cls, body: Any, *, path: str = "record") -> PolicyRecord:
        """Validate a record; :class:`~apportion.errors.InvalidRequest` naming the field otherwise."""
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise invalid_from_pydantic(exc, prefix=path, allowed=list(cls.model_fields)) from None

    def public(self, *, source: str, warnings: list[str] | None = None) -> dict[str, Any]:
        """The record as the API shows it, with its URI and where it came from."""
        out = self.model_dump(by_alias=True)
        out["policy_rule_uri"] = str(self.uri)
        out["source"] = source
        if warnings:
            out["warnings"] = warnings
        return out
