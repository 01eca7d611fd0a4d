"""Outgoing TLS settings: checked when the config loads, keys owner-only, clear errors."""

from __future__ import annotations

import ssl
import subprocess
import tomllib
from pathlib import Path

import pytest

from qcd.cli import _to_toml
from qcd.config import load_settings
from qcd.errors import ConfigError
from qcd.outputs.delivery import DeliverySettings, DeliveryWorker, Destination
from qcd.outputs.settings import ClientTlsSettings
from qcd.scu import client_context


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("client-tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=qcd", "-keyout", "client.key", "-out", "client.crt"],
                   cwd=d, check=True, capture_output=True)
    (d / "client.key").chmod(0o600)
    return d / "client.crt", d / "client.key"


DEST = '[[delivery.destinations]]\nname = "pacs"\nhost = "pacs"\nae_title = "PACS"\n'


def test_destination_and_audit_tls_load_and_round_trip(tmp_path: Path,
                                                       keypair: tuple[Path, Path]) -> None:
    cert, key = keypair
    s = load_settings(_write(tmp_path, DEST + f'[delivery.destinations.tls]\nenabled = true\n'
                             f'ca_file = "{cert}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
                             f'server_name = "pacs.example.org"\n'
                             f'[audit.tls]\nenabled = true\ncheck_hostname = false\n'),
                      environ={})
    tls = s.delivery.destinations[0].tls
    assert (tls.enabled, tls.ca_file, tls.key_file, tls.check_hostname, tls.server_name) == (
        True, str(cert), str(key), True, "pacs.example.org")
    assert s.audit.tls.enabled and not s.audit.tls.check_hostname and not s.audit.tls.ca_file
    out = tmp_path / "effective.toml"
    out.write_text(_to_toml(s.to_dict()))
    tomllib.loads(out.read_text())
    assert load_settings(out, environ={}) == s
    # the environment reaches the audit's table too
    env = load_settings(environ={"QCD_AUDIT__TLS__ENABLED": "true",
                                 "QCD_AUDIT__TLS__CA_FILE": str(cert)})
    assert env.audit.tls == ClientTlsSettings(enabled=True, ca_file=str(cert))


def _write(tmp_path: Path, body: str) -> Path:
    cfg = tmp_path / "qcd.toml"
    cfg.write_text(body)
    return cfg


@pytest.mark.parametrize(("table", "message"), [
    ('ca_file = "/nonexistent/ca.crt"',
     r"delivery.destinations\[0\].tls.ca_file: '/nonexistent/ca.crt' is not allowed; "
     r"allowed: an existing PEM file"),
    ('cert_file = "{cert}"', r"delivery.destinations\[0\].tls.key_file: '' .*set together "
                             r"with cert_file"),
    ('key_file = "{key}"', r"delivery.destinations\[0\].tls.key_file: .*set together"),
    ('server_name = "bad name/"', r"delivery.destinations\[0\].tls.server_name"),
])
def test_invalid_destination_tls_names_the_key(tmp_path: Path, keypair: tuple[Path, Path],
                                               table: str, message: str) -> None:
    cert, key = keypair
    body = DEST + "[delivery.destinations.tls]\nenabled = true\n" + table.format(
        cert=cert, key=key) + "\n"
    with pytest.raises(ConfigError, match=message):
        load_settings(_write(tmp_path, body), environ={})


def test_disabled_tls_is_not_checked(tmp_path: Path) -> None:
    body = DEST + '[delivery.destinations.tls]\nenabled = false\nca_file = "/nonexistent"\n'
    settings = load_settings(_write(tmp_path, body), environ={})
    assert not settings.delivery.destinations[0].tls.enabled


def test_a_client_key_open_to_others_is_refused_at_load(tmp_path: Path,
                                                        keypair: tuple[Path, Path]) -> None:
    cert, key = keypair
    loose = tmp_path / "loose.key"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o640)
    env = {"QCD_AUDIT__TLS__ENABLED": "true", "QCD_AUDIT__TLS__CERT_FILE": str(cert),
           "QCD_AUDIT__TLS__KEY_FILE": str(loose)}
    with pytest.raises(ConfigError, match=r"audit.tls.key_file: .* accessible by group "
                                          r"\(mode 0640\).*chmod 600"):
        load_settings(environ=env)
    loose.chmod(0o600)
    assert load_settings(environ=env).audit.tls.key_file == str(loose)


def test_tls_on_a_stow_destination_is_refused(tmp_path: Path) -> None:
    body = ('[[delivery.destinations]]\nname = "web"\nstow_url = "https://pacs/dicom-web"\n'
            '[delivery.destinations.tls]\nenabled = true\n')
    with pytest.raises(ConfigError, match=r"delivery.destinations\[0\].tls.enabled: .*https://"):
        load_settings(_write(tmp_path, body), environ={})


def test_client_context_verifies_and_checks_names(keypair: tuple[Path, Path]) -> None:
    cert, key = keypair
    context = client_context(ClientTlsSettings(enabled=True, ca_file=str(cert),
                                               cert_file=str(cert), key_file=str(key)), "x")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    relaxed = client_context(ClientTlsSettings(enabled=True, check_hostname=False), "x")
    assert relaxed.verify_mode == ssl.CERT_REQUIRED and not relaxed.check_hostname


def test_unreadable_pem_fails_at_start_with_the_key(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    dest = Destination("pacs", "pacs", 104, "PACS",
                       tls=ClientTlsSettings(enabled=True, ca_file=str(garbage)))
    with pytest.raises(ConfigError, match=r"delivery.destinations\[0\].tls: cannot load"):
        DeliveryWorker(None, DeliverySettings(destinations=(dest,)))  # type: ignore[arg-type]
