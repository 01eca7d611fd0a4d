"""Settings: layering, validation messages, round-trip of `qcd check-config`."""

from __future__ import annotations

import pickle
import tomllib
from pathlib import Path

import pytest

from qcd.cli import _to_toml
from qcd.config import Settings, load_settings
from qcd.errors import ConfigError


def test_defaults_are_embedded() -> None:
    s = load_settings(environ={})
    assert s == Settings()
    assert s.database.url.startswith("sqlite:///")
    assert s.ingest.port == 11112
    assert [r.analyzer for r in s.routing.rules] == ["earl", "motion", "motion", "chest",
                                                         "atrium"]


def test_file_then_environment_override(tmp_path: Path) -> None:
    cfg = tmp_path / "qcd.toml"
    cfg.write_text(
        '[ingest]\nport = 4242\nallowed_calling_aets = ["CT1", "PET2"]\n'
        "[assembly]\nquiet_seconds = 20\nquiet_seconds_by_modality = {PT = 45}\n"
        '[[routing.rules]]\nanalyzer = "earl"\nmodalities = ["PT"]\n'
    )
    s = load_settings(cfg, environ={"QCD_INGEST__PORT": "5000", "QCD_SPOOL__FSYNC": "false"})
    assert s.ingest.port == 5000  # env beats file
    assert s.ingest.allowed_calling_aets == ("CT1", "PET2")  # file beats default
    assert s.spool.fsync is False
    assert s.quiet_seconds_for("PT") == 45 and s.quiet_seconds_for("ct") == 20
    assert len(s.routing.rules) == 1


def test_qcd_config_env_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text('[node]\nae_title = "QCD2"\n')
    assert load_settings(environ={"QCD_CONFIG": str(cfg)}).node.ae_title == "QCD2"


def test_settings_are_immutable() -> None:
    s = load_settings(environ={})
    with pytest.raises(AttributeError):
        s.ingest.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.assembly.quiet_seconds_by_modality["PT"] = 1  # type: ignore[index]


def test_settings_cross_into_spawned_processes() -> None:
    """Ingest receivers are spawned with the daemon's settings, read-only tables included."""
    s = load_settings(environ={"QCD_ASSEMBLY__QUIET_SECONDS_BY_MODALITY": "PT=30"})
    copy = pickle.loads(pickle.dumps(s))
    assert copy == s
    assert copy.assembly.quiet_seconds_by_modality == {"PT": 30.0}
    with pytest.raises(TypeError):
        copy.assembly.quiet_seconds_by_modality["PT"] = 1  # still read-only


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"QCD_INGEST__PORT": "70000"}, "ingest.port: 70000 is not allowed; allowed: 1-65535"),
        ({"QCD_INGEST__PORT": "abc"}, "ingest.port: expected an integer"),
        ({"QCD_INGEST__PROCESSES": "0"}, "ingest.processes: 0 is not allowed; allowed: 1-64"),
        ({"QCD_INGEST__REACTOR": "busy"},
         "ingest.reactor: 'busy' is not allowed; allowed: event or polling"),
        ({"QCD_INGEST__MAX_INFLATED_MB": "0"},
         "ingest.max_inflated_mb: 0 is not allowed; allowed: MiB > 0"),
        ({"QCD_LOGGING__LEVEL": "LOUD"}, "allowed: DEBUG, INFO, WARNING, ERROR"),
        ({"QCD_NODE__AE_TITLE": "A" * 17}, "node.ae_title"),
        ({"QCD_INGEST__ALLOWED_NETWORKS": "10.0.0.0/8,nonsense"}, "allowed_networks[1]"),
        ({"QCD_DATABASE__URL": "mysql://x"}, "database.url"),
        ({"QCD_SPOOL__FSYNC": "maybe"}, "spool.fsync: expected true or false"),
        ({"QCD_INGEST__NOPE": "1"}, "unknown key ingest.nope; allowed keys:"),
        ({"QCD_PORT": "1"}, "expected QCD_<SECTION>__<KEY>"),
        ({"QCD_ASSEMBLY__QUIET_SECONDS_BY_MODALITY": "pt=3"}, "upper-case DICOM modality"),
        ({"QCD_INGEST__TLS__ENABLED": "true"}, "ingest.tls.cert_file"),
        ({"QCD_AUDIT__HARMONISE_TO": "EARL3"}, "audit.harmonise_to"),
        ({"QCD_AUDIT__WRITE_BACK_HARMONISED": "true", "QCD_OUTPUTS__ENABLED": "false"},
         "audit.write_back_harmonised"),
    ],
)
def test_invalid_values_name_key_and_allowed(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env)
    assert fragment in str(info.value)


def test_bad_regex_in_rule(tmp_path: Path) -> None:
    cfg = tmp_path / "qcd.toml"
    cfg.write_text('[[routing.rules]]\nanalyzer = "chest"\nbody_part = "(chest"\n')
    with pytest.raises(ConfigError, match=r"routing.rules\[0\].body_part"):
        load_settings(cfg, environ={})


def test_tls_needs_files(tmp_path: Path) -> None:
    cfg = tmp_path / "qcd.toml"
    cfg.write_text("[ingest.tls]\nenabled = true\n")
    with pytest.raises(ConfigError, match="ingest.tls.cert_file"):
        load_settings(cfg, environ={})


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[ingest\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})


def test_check_config_output_round_trips(tmp_path: Path) -> None:
    s = load_settings(environ={"QCD_ASSEMBLY__QUIET_SECONDS_BY_MODALITY": "PT=30,MR=5"})
    out = tmp_path / "effective.toml"
    out.write_text(_to_toml(s.to_dict()))
    tomllib.loads(out.read_text())
    assert load_settings(out, environ={}) == s


def test_example_config_in_deploy_is_valid() -> None:
    example = Path(__file__).parents[2] / "deploy" / "qcd.toml"
    s = load_settings(example, environ={})
    assert s.node.ae_title


def test_dicomweb_audit_needs_an_http_url() -> None:
    with pytest.raises(ConfigError, match="audit.dicomweb_url"):
        load_settings(environ={"QCD_AUDIT__METHOD": "dicomweb"})
    s = load_settings(environ={"QCD_AUDIT__METHOD": "dicomweb",
                               "QCD_AUDIT__DICOMWEB_URL": "https://pacs.example/dicom-web"})
    assert s.audit.method == "dicomweb"
