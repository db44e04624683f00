"""Partners: the registry, RFC 9421 signing and verification, authentication, the client."""

__all__: list[str] = []
