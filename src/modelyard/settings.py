"""One Settings object; environment variables are the interface to Kubernetes manifests.

Every field reads ``MODELYARD_<NAME>``. Object-store credentials use the standard variables that boto3
and KServe's storage initializer read (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), so the same
Secret serves the pipeline, the predictor and the storage initializer.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelyard.errors import ModelyardError


class S3Settings(BaseSettings):
    """Credentials and endpoint for S3-compatible storage, under their standard AWS names."""

    model_config = SettingsConfigDict(env_prefix="AWS_", extra="ignore")

    endpoint_url: str | None = Field(default=None, description="AWS_ENDPOINT_URL, e.g. http://minio:9000")
    access_key_id: str | None = Field(default=None, description="AWS_ACCESS_KEY_ID")
    secret_access_key: str | None = Field(default=None, description="AWS_SECRET_ACCESS_KEY", repr=False)
    region: str | None = Field(default=None, description="AWS_REGION")


class Settings(BaseSettings):
    """Runtime configuration. Defaults give the embedded setup: SQLite and a folder under HOME."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_", extra="ignore", env_nested_delimiter="__")

    home: Path = Field(default=Path(".modelyard"), description="Working folder for the embedded setup")
    database_url: str = Field(
        default="", description="SQLAlchemy URL of the registry; default sqlite:///<HOME>/modelyard.db"
    )
    store_uri: str = Field(default="", description="Object store root: file:///path or s3://bucket/prefix")
    s3: S3Settings = Field(default_factory=S3Settings)

    @field_validator("store_uri")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value:
            return value
        parsed = urlparse(value)
        if parsed.scheme not in ("file", "s3"):
            raise ValueError(f"must start with file:// or s3://, got {value!r}")
        if parsed.scheme == "s3" and not parsed.netloc:
            raise ValueError(f"an s3:// URI needs a bucket, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        home = self.home.expanduser().resolve()
        self.home = home
        if not self.database_url:
            self.database_url = f"sqlite:///{home / 'modelyard.db'}"
        if not self.store_uri:
            self.store_uri = f"file://{home / 'store'}"
        return self


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment, turning a bad variable into an error that names it."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"MODELYARD_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ModelyardError(f"invalid configuration: {problems}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once. Tests and the CLI build their own with load_settings()."""
    return load_settings()
