"""The managed identity token endpoint of the emulator's suite, for the project's tests (one implementation)."""

from assistants_emulator.tests.identity import (
    IDENTITY_HEADER_SECRET,
    ManagedIdentityEndpoint,
    managed_identity,
    serve_managed_identity,
)

__all__ = ["IDENTITY_HEADER_SECRET", "ManagedIdentityEndpoint", "managed_identity", "serve_managed_identity"]
