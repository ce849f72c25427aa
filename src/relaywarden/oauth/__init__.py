"""OAuth2 for next hops: token providers ([oauth.NAME]) for AUTH XOAUTH2 / OAUTHBEARER."""

from relaywarden.oauth.tokens import OAuthLogin, Token, TokenError, TokenProvider, providers

__all__ = ["OAuthLogin", "Token", "TokenError", "TokenProvider", "providers"]
