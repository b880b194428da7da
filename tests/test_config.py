from __future__ import annotations

from pathlib import Path

import pytest

from bulwark.config import load_settings
from bulwark.errors import InvalidInput

pytestmark = pytest.mark.timeout(10)


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text('listen = "127.0.0.1:9001"\nmax_push_bytes = 100\nlog_format = "text"\n')
    s = load_settings(config_file=cfg, env={"BULWARK_MAX_PUSH_BYTES": "200"}, overrides={"data_dir": tmp_path})
    assert (s.listen, s.max_push_bytes, s.log_format) == ("127.0.0.1:9001", 200, "text")
    s = load_settings(config_file=cfg, env={"BULWARK_LISTEN": "127.0.0.1:9002"},
                      overrides={"data_dir": tmp_path, "listen": "127.0.0.1:9003"})
    assert s.port == 9003


def test_file_in_data_dir_is_found(tmp_path: Path) -> None:
    (tmp_path / "bulwark.toml").write_text('listen = "0.0.0.0:7000"\n')
    s = load_settings(env={"BULWARK_DATA_DIR": str(tmp_path)})
    assert s.listen == "0.0.0.0:7000" and s.data_dir == tmp_path


@pytest.mark.parametrize(
    "content,needle",
    [
        ('listen = "nope"', "HOST:PORT"),
        ("max_push_bytes = -1", "max_push_bytes"),
        ("colour = 1", "colour"),
        ("listen = [", "not valid TOML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text(content)
    with pytest.raises(InvalidInput) as err:
        load_settings(config_file=cfg, env={}, overrides={"data_dir": tmp_path})
    assert needle in err.value.message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        load_settings(config_file=tmp_path / "nope.toml", env={})
