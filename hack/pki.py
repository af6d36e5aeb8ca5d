"""Certificates and kubeconfigs for the test control plane (used by hack/controlplane.py).

Why: the API server runs with real client-certificate authentication and service-account token
signing, like a kubeadm cluster: one CA signs the serving certificate and one client certificate
per identity; a front-proxy CA backs request-header authentication; an EC key pair signs
service-account tokens. Everything is generated fresh per cluster and valid for a week.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

__all__ = ["USERS", "client_context", "write_kubeconfig", "write_pki"]

# Client identities: (common name, organisation). system:masters is the built-in admin group;
# the controller-manager and scheduler use the identities the default RBAC policy binds.
USERS = {
    "admin": ("finetune-admin", "system:masters"),
    "kube-controller-manager": ("system:kube-controller-manager", None),
    "kube-scheduler": ("system:kube-scheduler", None),
    "kwok": ("kwok-controller", "system:masters"),
}


def write_pki(directory: Path, service_ip: str) -> dict[str, Path]:
    """A CA, the API server's serving cert, client certs for USERS, a service-account key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    files: dict[str, Path] = {}

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def save_key(name: str, k: ec.EllipticCurvePrivateKey) -> None:
        files[name] = directory / name
        files[name].write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def save_cert(name: str, cert: x509.Certificate) -> None:
        files[name] = directory / name
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def name_of(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def builder(subject: x509.Name, issuer: x509.Name, pub: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
        )

    def ca(name: str, common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
        ca_key, ca_name = key(), name_of(common_name)
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        cert = (
            builder(ca_name, ca_name, ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        save_key(f"{name}.key", ca_key)
        save_cert(f"{name}.crt", cert)
        return ca_key, ca_name

    cas = {
        "ca": ca("ca", "finetune-test-ca"),
        "front-proxy-ca": ca("front-proxy-ca", "front-proxy-ca"),
    }

    def leaf(
        name: str, subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[Any], by: str = "ca"
    ) -> None:
        k, (ca_key, ca_name) = key(), cas[by]
        b = builder(subject, ca_name, k.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        save_key(f"{name}.key", k)
        save_cert(f"{name}.crt", b.sign(ca_key, hashes.SHA256()))

    leaf(
        "apiserver",
        name_of("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address(service_ip)),
            *(
                x509.DNSName(d)
                for d in (
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                )
            ),
        ],
    )
    for user, (cn, org) in USERS.items():
        leaf(user, name_of(cn, org), ExtendedKeyUsageOID.CLIENT_AUTH, [])
    # The API server's identity towards aggregated API servers (request-header authentication).
    client = ExtendedKeyUsageOID.CLIENT_AUTH
    leaf("front-proxy-client", name_of("front-proxy-client"), client, [], by="front-proxy-ca")

    sa_key = key()
    save_key("sa.key", sa_key)
    files["sa.pub"] = directory / "sa.pub"
    files["sa.pub"].write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return files


def client_context(pki: dict[str, Path], user: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca.crt"]))
    ctx.load_cert_chain(str(pki[f"{user}.crt"]), str(pki[f"{user}.key"]))
    return ctx


def write_kubeconfig(path: Path, server: str, pki: dict[str, Path], user: str) -> Path:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "finetune-test",
                "cluster": {"server": server, "certificate-authority-data": b64(pki["ca.crt"])},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pki[f"{user}.crt"]),
                    "client-key-data": b64(pki[f"{user}.key"]),
                },
            }
        ],
        "contexts": [
            {"name": "finetune-test", "context": {"cluster": "finetune-test", "user": user}}
        ],
        "current-context": "finetune-test",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is valid kubeconfig YAML
    path.chmod(0o600)
    return path
