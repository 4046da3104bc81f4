"""The shipped catalog, name resolution, and validation of catalog files."""
from __future__ import annotations

import pytest
import yaml

from chalicelib import catalog
from chalicelib.catalog import CATALOG_DIR, CatalogError, load
from chalicelib.errors import ProoflineError, UnknownJobClass, UnknownProfile
from chalicelib.models import State
from chalicelib.verification.policies import KNOWN_POLICIES


@pytest.fixture(scope="module")
def shipped():
    return load()


def test_shipped_media_probe_class(shipped):
    cls = shipped.job_class("media_probe")
    assert cls.name == "media_probe"
    assert cls.pool == "media"
    assert cls.output == "probe.json"
    assert cls.verification.policy == "probe_report"
    assert cls.defaults.max_attempts == 3
    assert cls.defaults.payment_policy == "none"
    assert cls.max_input_bytes == 5 * 1024 ** 3
    assert cls.timeouts_s == {State.REQUESTED: 86400, State.ASSIGNED: 3600, State.RUNNING: 300,
                              State.SUBMITTED: 600, State.VERIFYING: 300}


def test_every_class_points_at_existing_policies(shipped):
    for cls in shipped.job_classes.values():
        assert shipped.payment_policy(cls.defaults.payment_policy).name == cls.defaults.payment_policy
        assert cls.verification.policy in KNOWN_POLICIES
    assert shipped.payment_policy("none").escrow is False
    assert shipped.payment_policy("escrow_before_start").escrow is True


def test_default_is_cached(shipped):
    assert catalog.default() is catalog.default()
    assert catalog.default() == shipped


def test_resolve_class_name(shipped):
    cls, profile = shipped.resolve("media_probe")
    assert cls is shipped.job_class("media_probe") and profile is None


def test_resolve_unknown_name(shipped):
    with pytest.raises(UnknownProfile) as info:
        shipped.resolve("transcode_4k")
    assert (info.value.status, info.value.reason) == (400, "unknown_profile")


def test_unknown_job_class(shipped):
    with pytest.raises(UnknownJobClass) as info:
        shipped.job_class("nope")
    err = info.value
    assert (err.status, err.reason) == (400, "unknown_job_class")
    assert err.details == {"known": sorted(shipped.job_classes)}
    assert "media_probe" in err.details["known"]


def test_unknown_payment_policy(shipped):
    with pytest.raises(ProoflineError) as info:
        shipped.payment_policy("nope")
    assert (info.value.status, info.value.reason) == (400, "unknown_payment_policy")


# -- custom catalogs -------------------------------------------------------------------------
def shipped_raw() -> dict:
    raw: dict = {}
    for path in sorted(CATALOG_DIR.glob("*.yaml")):
        raw.update(yaml.safe_load(path.read_text()))
    return raw


def write(tmp_path, raw: dict) -> None:
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(raw))


def test_profiles_resolve_to_their_one_owner(tmp_path):
    raw = shipped_raw()
    raw["job_classes"]["media_probe"]["profiles"] = {"quick": {"decode_frames": 1}}
    raw["job_classes"]["media_other"] = {**raw["job_classes"]["media_probe"],
                                         "profiles": {"shared": {}}}
    raw["job_classes"]["media_probe"]["profiles"]["shared"] = {}
    write(tmp_path, raw)
    cat = load(tmp_path)
    cls, profile = cat.resolve("quick")
    assert (cls.name, profile) == ("media_probe", "quick")
    with pytest.raises(UnknownProfile):       # ambiguous: two classes own it
        cat.resolve("shared")


def test_copy_of_shipped_catalog_loads(tmp_path):
    write(tmp_path, shipped_raw())
    assert load(tmp_path) == load()


def _set(raw, path, value):
    *parents, last = path
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value


@pytest.mark.parametrize("path,value", [
    (("job_classes", "media_probe", "defaults", "max_attempts"), 0),
    (("job_classes", "media_probe", "defaults", "max_attempts"), 11),
    (("job_classes", "media_probe", "gpu"), True),
    (("job_classes", "media_probe", "max_input_bytes"), 0),
    (("job_classes", "media_probe", "timeouts_s", "assigned"), 0),
    (("job_classes", "media_probe", "timeouts_s", "sleeping"), 10),
    (("job_classes", "media_probe", "verification"), {}),
    (("payment_policies", "none", "escrow"), "sometimes"),
    (("payment_policies", "none", "dispute_window_s"), -1),
], ids=lambda v: str(v[-1]) if isinstance(v, tuple) else None)
def test_invalid_class_or_policy_is_a_catalog_error(tmp_path, path, value):
    raw = shipped_raw()
    _set(raw, path, value)
    write(tmp_path, raw)
    with pytest.raises(CatalogError) as info:
        load(tmp_path)
    assert info.value.reason == "catalog_invalid"
    assert path[-1] in info.value.message or path[-2] in info.value.message


def test_missing_field_is_a_catalog_error(tmp_path):
    raw = shipped_raw()
    del raw["job_classes"]["media_probe"]["pool"]
    write(tmp_path, raw)
    with pytest.raises(CatalogError, match="pool"):
        load(tmp_path)


def test_default_payment_policy_must_exist(tmp_path):
    raw = shipped_raw()
    raw["job_classes"]["media_probe"]["defaults"]["payment_policy"] = "barter"
    write(tmp_path, raw)
    with pytest.raises(CatalogError) as info:
        load(tmp_path)
    assert "barter" in info.value.message
