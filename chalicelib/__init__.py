"""Proofline control plane: domain core and the adapters it talks through."""
