"""Proofline CLI and local stack."""
