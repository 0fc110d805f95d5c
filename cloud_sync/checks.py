"""What a site config's `cloud:` section asks of the disk: key and secret files that exist and parse."""

from __future__ import annotations

import os
from collections.abc import Iterator

from edge.core.config import Config
from edge.core.loader import Loc


def cloud_file_checks(cfg: Config) -> Iterator[tuple[Loc, str]]:
    """The key and secret files the cloud link needs exist and hold what they should."""
    cloud = cfg.cloud
    if cloud is None:
        return
    from cloud_sync.keys import KeyFileError, load_public_key  # lazy: cryptography only for sites with a cloud

    for j, key in enumerate(cloud.command_keys):
        try:
            load_public_key(key)
        except KeyFileError as exc:
            yield ("cloud", "command_keys", j), str(exc)
    for field in ("password_file", "ca_file", "cert_file", "key_file"):
        path = getattr(cloud.mqtt, field)
        if path is not None and not os.access(path, os.R_OK):
            yield ("cloud", "mqtt", field), f"{path}: cannot be read"
    if cloud.influx is not None and cloud.influx.token_file is not None and not os.access(
            cloud.influx.token_file, os.R_OK):
        yield ("cloud", "influx", "token_file"), f"{cloud.influx.token_file}: cannot be read"
