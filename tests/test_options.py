"""Driver options, layer storage options and id maps (pure logic)."""

import pytest

from btrfsx import IDMap, OptionError
from btrfsx.idmap import root_pair, to_container, to_host
from btrfsx.options import check_size, parse_driver_options, parse_key_value, parse_storage_opt


def test_key_value_splits_at_the_first_equals_and_strips():
    assert parse_key_value(" btrfs.min_space = 10G ") == ("btrfs.min_space", "10G")
    assert parse_key_value("a=b=c") == ("a", "b=c")
    assert parse_key_value("a=") == ("a", "")
    with pytest.raises(OptionError, match="unable to parse key/value option: novalue"):
        parse_key_value("novalue")


def test_driver_options():
    opts = parse_driver_options(["BTRFS.Min_Space=1G", "btrfs.size=512m", "btrfsx.quota=QGROUP"])
    assert opts.min_space == 1 << 30
    assert opts.default_size == 512 << 20
    assert opts.quota_mode == "qgroup"
    assert parse_driver_options(["btrfsx.quota=qgroups"]).quota_mode == "qgroup"   # the spelling of old status()
    assert opts.wants_quota
    assert not parse_driver_options([]).wants_quota
    assert parse_driver_options(["btrfsx.changes=naive"]).changes == "naive"


@pytest.mark.parametrize("option, message", [
    ("btrfs.mountopt=nodev", "btrfs driver does not support mount options"),
    ("btrfs.unknown=1", "Unknown option btrfs.unknown"),
    ("overlay.size=1G", "Unknown option overlay.size"),
    ("btrfs.min_space", "unable to parse key/value option"),
    ("btrfs.min_space=lots", "btrfs.min_space: invalid size: 'lots'"),
    ("btrfs.size=-1", "btrfs.size: invalid size"),
    ("btrfsx.quota=fast", "btrfsx.quota must be one of simple, qgroup"),
    ("btrfsx.changes=magic", "btrfsx.changes must be one of"),
])
def test_bad_driver_options(option, message):
    with pytest.raises(OptionError, match=message):
        parse_driver_options([option])
    assert issubclass(OptionError, ValueError)


def test_driver_options_must_be_a_sequence_not_a_string():
    with pytest.raises(OptionError, match="sequence"):
        parse_driver_options("btrfs.size=1G")


def test_storage_opt_size():
    assert parse_storage_opt(None) is None
    assert parse_storage_opt({}) is None
    assert parse_storage_opt({"size": "10G"}) == 10 << 30
    assert parse_storage_opt({"SIZE": "1.5g"}) == int(1.5 * (1 << 30))
    with pytest.raises(OptionError, match="Unknown option inodes"):
        parse_storage_opt({"inodes": "5"})
    with pytest.raises(OptionError, match="size: invalid size: '10 G B'"):
        parse_storage_opt({"size": "10 G B"})


def test_size_bounds_use_go_units_human_size_in_messages():
    check_size(1, 0)
    with pytest.raises(OptionError, match=r"btrfs: invalid storage size: 0B"):
        check_size(0, 0)
    with pytest.raises(OptionError, match=r"btrfs: storage size cannot be less than 104.9MB"):
        check_size(1 << 20, 100 << 20)
    check_size(100 << 20, 100 << 20)


def test_id_maps():
    maps = [IDMap(0, 100000, 65536), IDMap(65536, 300000, 10)]
    assert to_host(0, maps) == 100000
    assert to_host(65537, maps) == 300001
    assert to_container(100005, maps) == 5
    assert to_host(42, None) == 42 and to_container(42, []) == 42
    with pytest.raises(ValueError, match="Container ID 70000 cannot be mapped to a host ID"):
        to_host(70000, maps)
    with pytest.raises(ValueError, match="Host ID 5 cannot be mapped"):
        to_container(5, maps)
    assert root_pair(maps, [IDMap(0, 200000, 1000)]) == (100000, 200000)
    assert root_pair(None, None) == (0, 0)
    with pytest.raises(ValueError):
        root_pair([IDMap(1, 1000, 10)], None)


def test_quota_mode_is_spelled_as_the_option_and_takes_the_old_spelling():
    from btrfsx import QuotaMode
    assert str(QuotaMode.QGROUP) == "qgroup" == QuotaMode.QGROUP.value
    assert QuotaMode("qgroup") is QuotaMode("qgroups") is QuotaMode.QGROUP
    with pytest.raises(ValueError):
        QuotaMode("groups")
