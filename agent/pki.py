"""Lab certificates: a local CA, a server certificate and client certificates, as PEM files.

The agent speaks mutual TLS only (agent/server.py): the server proves it is the host it claims
to be, and every client proves who it is with a certificate signed by the CA the agent trusts.
In production those certificates come from the cloud's own PKI. For the lab, `make run` and the
tests, this module makes a small one:

    ca.pem / ca.key                      the CA (trusted by the agent and by clients)
    server.pem / server.key              the agent's certificate: SAN = the host names and IP
                                         addresses given, plus localhost, 127.0.0.1 and ::1
    <identity>.pem / <identity>.key      a client certificate: CN and SAN (DNS) = the identity,
                                         e.g. "control-plane" or "operator", the name the agent's
                                         allow-list checks (agent/server.py)

Keys are ECDSA P-256 (quick to make, supported by every TLS stack gRPC uses) and are written
with mode 0600, certificates with 0644, each through a temporary file and a rename, so a reader
never sees half a file. Leaf certificates carry an extended key usage (serverAuth or clientAuth)
so the server's certificate cannot be used as a client's, or the other way round.

`lab_pki(directory)` makes whatever is missing and keeps what exists, so `make run` can call it
every time. It is a lab tool: the CA key lies next to the certificates, unencrypted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity clients such as browsers accept for a leaf
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates are valid from a little before "now"
DEFAULT_CLIENTS = ("control-plane", "operator")

# An identity becomes a certificate's CN and a DNS SAN, and the name in the agent's allow-list:
# lower-case letters, digits, '.' and '-', starting and ending with a letter or digit.
_IDENTITY = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class CertFiles:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM): what grpc's credentials functions take."""
        return self.cert.read_bytes(), self.key.read_bytes()


@dataclass(frozen=True, slots=True)
class LabPki:
    """Every file `lab_pki` made, by role."""

    ca: CertFiles
    server: CertFiles
    clients: dict[str, CertFiles]


def check_identity(identity: str) -> str:
    if not isinstance(identity, str) or not _IDENTITY.fullmatch(identity):
        raise ValueError(
            f"identity: must be 1-63 characters a-z, 0-9, '.' or '-', starting and ending with "
            f"a letter or digit, got {identity!r}"
        )
    return identity


def make_ca(directory: str | os.PathLike[str], name: str = "Andromede lab CA") -> CertFiles:
    """Make a self-signed CA as `directory`/ca.pem and ca.key (replacing any there)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = _base(subject, subject, key, days=CA_DAYS, is_ca=True).sign(key, hashes.SHA256())
    return _write(Path(directory), "ca", cert, key)


def make_server_cert(
    ca: CertFiles,
    directory: str | os.PathLike[str],
    *,
    hostnames: Iterable[str] = (),
    ips: Iterable[str] = (),
    name: str = "server",
) -> CertFiles:
    """Make the agent's certificate, signed by `ca`, as `directory`/<name>.pem and .key.

    Its SAN holds `hostnames`, `ips`, and always localhost, 127.0.0.1 and ::1; its CN is the
    first host name.
    """
    hostnames = list(hostnames)
    dns = _unique(["localhost", *hostnames])
    addresses = _unique(["127.0.0.1", "::1", *ips])
    try:
        ip_objects = [ipaddress.ip_address(a) for a in addresses]
    except ValueError as e:
        raise ValueError(f"ips: {e}") from None
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(a) for a in ip_objects]
    cn = hostnames[0] if hostnames else "localhost"
    return _issue(ca, Path(directory), name, cn, sans, ExtendedKeyUsageOID.SERVER_AUTH)


def make_client_cert(
    ca: CertFiles, directory: str | os.PathLike[str], identity: str
) -> CertFiles:
    """Make a client certificate for `identity` (CN and DNS SAN), signed by `ca`, as
    `directory`/<identity>.pem and .key."""
    check_identity(identity)
    return _issue(
        ca,
        Path(directory),
        identity,
        identity,
        [x509.DNSName(identity)],
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )


def lab_pki(
    directory: str | os.PathLike[str],
    *,
    hostnames: Iterable[str] = (),
    ips: Iterable[str] = (),
    clients: Iterable[str] = DEFAULT_CLIENTS,
) -> LabPki:
    """Make the lab's CA, server and client certificates in `directory`, keeping those that
    exist (a new CA means new leaves: if ca.pem is missing, everything is made again)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    clients = [check_identity(c) for c in clients]
    ca = CertFiles(directory / "ca.pem", directory / "ca.key")
    fresh = not (ca.cert.exists() and ca.key.exists())
    if fresh:
        ca = make_ca(directory)
    server = CertFiles(directory / "server.pem", directory / "server.key")
    if fresh or not (server.cert.exists() and server.key.exists()):
        server = make_server_cert(ca, directory, hostnames=hostnames, ips=ips)
    made: dict[str, CertFiles] = {}
    for identity in clients:
        files = CertFiles(directory / f"{identity}.pem", directory / f"{identity}.key")
        if fresh or not (files.cert.exists() and files.key.exists()):
            files = make_client_cert(ca, directory, identity)
        made[identity] = files
    return LabPki(ca=ca, server=server, clients=made)


# --- inside ----------------------------------------------------------------------------------


def _issue(
    ca: CertFiles,
    directory: Path,
    name: str,
    common_name: str,
    sans: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
) -> CertFiles:
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.key}: expected an EC private key (made by agent/pki.py)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _base(subject, ca_cert.subject, key, days=LEAF_DAYS, is_ca=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _write(directory, name, cert, key)


def _base(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, *, days: int, is_ca: bool
) -> x509.CertificateBuilder:
    """What the CA and every leaf share: serial, validity, basic constraints, key usage (a CA
    also signs certificates and CRLs) and the subject key identifier."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertFiles:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = CertFiles(directory / f"{name}.pem", directory / f"{name}.key")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_file(files.key, key_pem, 0o600)
    _write_file(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file (created 0600) and a rename: never half a file, and a
    key is never readable by others, not even for a moment."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agent.pki DIR [--host NAME]... [--ip ADDR]... [--client ID]...`"""
    parser = argparse.ArgumentParser(
        prog="python -m agent.pki", description="Make (or complete) lab certificates in DIR."
    )
    parser.add_argument("directory")
    parser.add_argument("--host", action="append", default=[], help="a server DNS name")
    parser.add_argument("--ip", action="append", default=[], help="a server IP address")
    parser.add_argument(
        "--client", action="append", default=None, help="a client identity (default: "
        + ", ".join(DEFAULT_CLIENTS) + ")"
    )
    args = parser.parse_args(argv)
    pki = lab_pki(
        args.directory,
        hostnames=args.host,
        ips=args.ip,
        clients=args.client if args.client is not None else DEFAULT_CLIENTS,
    )
    print(f"CA:     {pki.ca.cert}")
    print(f"server: {pki.server.cert} {pki.server.key}")
    for identity, files in pki.clients.items():
        print(f"client {identity}: {files.cert} {files.key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
