"""Identity: did:pkh identifiers and EIP-712 signed requests (nonces, expiry, replay protection)."""
