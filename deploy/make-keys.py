"""`make keys`: writes a fresh signing key pair for JWT_ALGORITHM=EdDSA (default) or RS256.

Usage: python deploy/make-keys.py [EdDSA|RS256] [folder]   (default folder: .keys/)
Prints the settings to use; on rotation, the old private key file goes into JWT_PREVIOUS_KEY_FILES.
"""

import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from shared.tokens import public_jwk


def main(argv: list[str]) -> None:
    algorithm = argv[0] if argv else "EdDSA"
    if algorithm not in ("EdDSA", "RS256"):
        raise SystemExit("algorithm must be EdDSA or RS256")
    folder = Path(argv[1] if len(argv) > 1 else ".keys")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    private_key = (
        ed25519.Ed25519PrivateKey.generate() if algorithm == "EdDSA" else rsa.generate_private_key(65537, 3072)
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    private_path = folder / f"{algorithm.lower()}-{stamp}.private.pem"
    public_path = folder / f"{algorithm.lower()}-{stamp}.public.pem"
    private_path.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    kid = public_jwk(private_key.public_key(), algorithm)["kid"]
    print(f"kid {kid}")
    print(f"auth service:  JWT_ALGORITHM={algorithm} JWT_PRIVATE_KEY_FILE={private_path}")
    print(
        f"users service: JWT_ALGORITHM={algorithm} JWT_PUBLIC_KEY_FILE={public_path}"
        "  (or JWKS_URL=<auth>/.well-known/jwks.json)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
