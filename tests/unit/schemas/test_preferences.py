"""Pure preference logic: defaults, partial changes, consent history, the published record."""

from __future__ import annotations

from datetime import datetime, timezone

import pydantic
import pytest

from schemas.preferences import (
    CATEGORIES,
    CHANNELS,
    Preferences,
    PreferencesPatch,
    PreferenceUpdate,
    apply_patch,
    preference_key,
    stored_preferences,
    switch_off,
    switched_off,
)

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)


def patch(**body) -> PreferencesPatch:
    return PreferencesPatch.model_validate(body)


def problems(body: dict) -> list[tuple[str, str]]:
    with pytest.raises(pydantic.ValidationError) as caught:
        PreferencesPatch.model_validate(body)
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in caught.value.errors()]


def test_defaults_are_everything_on_and_no_caps():
    prefs = stored_preferences(7, None)
    assert all(prefs.enabled(c) for c in CHANNELS)
    assert prefs.frequency_cap == {} and prefs.frequency_cap_window_days == 7
    assert prefs.categories == dict.fromkeys(CATEGORIES, True)
    assert {c: v.source for c, v in prefs.consent.items()} == dict.fromkeys(CHANNELS, "default")
    assert prefs.updated_at is None and prefs.version == 0


def test_switching_email_off_changes_only_email_and_records_consent():
    after = apply_patch(Preferences(user_id=7), patch(email_enabled=False, unsubscribe_reason="Too many"), "api", NOW)
    assert not after.email_enabled and after.sms_enabled and after.push_enabled and after.in_app_enabled
    assert after.consent["email"].model_dump() == {"granted": False, "at": NOW, "source": "api", "text_version": None}
    assert after.consent["sms"].source == "default"
    assert after.version == 1 and after.updated_at == NOW
    assert switched_off(Preferences(user_id=7), after) == ["email"]


def test_caps_and_categories_merge_and_null_removes_a_cap():
    start = Preferences(user_id=7, frequency_cap={"email": 3, "push": 5})
    after = apply_patch(start, patch(frequency_cap={"email": None, "sms": 2}, categories={"newsletters": False}),
                        "api", NOW)
    assert after.frequency_cap == {"push": 5, "sms": 2}
    assert after.categories["newsletters"] is False and after.categories["promotional"] is True
    assert switched_off(start, after) == []


def test_a_patch_that_changes_nothing_returns_the_same_state_and_version():
    start = Preferences(user_id=7, email_enabled=False, frequency_cap={"email": 3}, version=4)
    same = apply_patch(start, patch(email_enabled=False, frequency_cap={"email": 3}, categories={"promotional": True}),
                       "api", NOW)
    assert same is start


def test_switch_off_is_idempotent():
    once = switch_off(Preferences(user_id=7), "sms", "one_click", NOW)
    assert not once.sms_enabled and once.consent["sms"].source == "one_click" and once.version == 1
    assert switch_off(once, "sms", "one_click", NOW) is once


@pytest.mark.parametrize(
    "body, field",
    [
        ({"frequency_cap": {"webhook": 3}}, "frequency_cap.webhook.[key]"),
        ({"frequency_cap": {"email": -1}}, "frequency_cap.email"),
        ({"frequency_cap": {"email": 0}}, "frequency_cap.email"),
        ({"frequency_cap": {"email": 1001}}, "frequency_cap.email"),
        ({"frequency_cap": {"email": "3"}}, "frequency_cap.email"),
        ({"categories": {"gossip": False}}, "categories.gossip.[key]"),
        ({"categories": {"newsletters": "no"}}, "categories.newsletters"),
        ({"email_enabled": None}, "email_enabled"),
        ({"email_enabled": "false"}, "email_enabled"),
        ({"sms_enabled": 0}, "sms_enabled"),
        ({"frequency_cap": None}, "frequency_cap"),
        ({"colour": "blue"}, "colour"),
        ({"unsubscribe_reason": "bored"}, "unsubscribe_reason"),
        ({"email_enabled": True, "unsubscribe_reason": "bored"}, "unsubscribe_reason"),
        ({"email_enabled": False, "unsubscribe_reason": "x" * 501}, "unsubscribe_reason"),
    ],
)
def test_invalid_patches_name_the_field(body, field):
    assert field in [name for name, _ in problems(body)]


def test_stored_row_fills_defaults_and_drops_names_no_longer_known():
    row = {
        "email_enabled": False, "sms_enabled": True, "push_enabled": True, "in_app_enabled": False,
        "frequency_cap": {"push": 4, "fax": 1}, "categories": {"newsletters": False, "retired": False},
        "consent": {"email": {"granted": False, "at": NOW.isoformat(), "source": "one_click"}},
        "updated_at": NOW, "version": 3,
    }
    prefs = stored_preferences(9, row)
    assert prefs.frequency_cap == {"push": 4}
    assert prefs.categories == dict.fromkeys(CATEGORIES, True) | {"newsletters": False}
    assert prefs.consent["email"].source == "one_click" and prefs.consent["push"].source == "default"
    assert prefs.unsubscribed() == ["email", "in_app"]


def test_published_record_carries_the_whole_state():
    prefs = apply_patch(Preferences(user_id=42), patch(push_enabled=False, frequency_cap={"email": 3}), "api", NOW)
    update = prefs.to_update()
    assert update == PreferenceUpdate(
        user_id=42,
        channels={"email": True, "sms": True, "push": False, "in_app": True},
        frequency_cap={"email": 3},
        categories=dict.fromkeys(CATEGORIES, True),
        unsubscribed=["push"],
        updated_at=NOW,
        version=1,
    )
    assert PreferenceUpdate.model_validate_json(update.model_dump_json()) == update


def test_key_and_topic_match_the_pipeline():
    from schemas.topics import PREFERENCE_UPDATES, USER_PROFILES

    assert PREFERENCE_UPDATES.record is PreferenceUpdate and PREFERENCE_UPDATES.compacted
    assert PREFERENCE_UPDATES.partitions == USER_PROFILES.partitions  # co-partitioned with the profiles
    assert preference_key(1234567) == b"1234567"


# ---- consent per channel: source, time, the text agreed to ----------------------------------------


def test_consent_granted_through_a_patch_records_source_time_and_text_version():
    signed_up = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)
    body = {"consent": {"sms": {"granted": True, "source": "signup_form", "text_version": "sms-terms-v3",
                                "at": "2026-11-20T09:30:00Z"}}}
    after = apply_patch(switch_off(Preferences(user_id=7), "sms", "api", NOW), patch(**body), "api", NOW)
    assert after.sms_enabled
    assert after.consent["sms"].model_dump() == {"granted": True, "at": signed_up, "source": "signup_form",
                                                 "text_version": "sms-terms-v3"}
    assert after.to_update().consented == ["sms"] and after.updated_at == NOW


def test_consent_at_defaults_to_now_and_withdrawing_switches_the_channel_off():
    after = apply_patch(Preferences(user_id=7), patch(consent={"sms": {"granted": False, "source": "call_center"}}),
                        "api", NOW)
    assert not after.sms_enabled and after.consent["sms"].at == NOW and after.to_update().consented == []
    assert switched_off(Preferences(user_id=7), after) == ["sms"]


def test_defaults_and_channels_switched_on_without_a_grant_count_as_no_consent():
    assert Preferences(user_id=7).to_update().consented == []


def test_the_same_consent_twice_changes_nothing():
    body = {"consent": {"sms": {"granted": True, "source": "signup_form", "text_version": "v3"}}}
    once = apply_patch(Preferences(user_id=7), patch(**body), "api", NOW)
    assert apply_patch(once, patch(**body), "api", NOW) is once and once.version == 1


@pytest.mark.parametrize("consent,where,why", [
    ({"sms": {"granted": True, "source": "signup_form"}}, "consent.sms.text_version", "required when consent"),
    ({"sms": {"granted": True, "source": "Signup Form!", "text_version": "v1"}}, "consent.sms.source", "pattern"),
    ({"sms": {"granted": True, "source": "default", "text_version": "v1"}}, "consent.sms.source", "nobody decided"),
    ({"sms": {"granted": "yes", "source": "form", "text_version": "v1"}}, "consent.sms.granted", "boolean"),
    ({"sms": {"granted": True, "source": "form", "text_version": "v1", "at": "yesterday"}}, "consent.sms.at", "ISO"),
    ({"sms": {"granted": True, "source": "form", "text_version": "v1", "at": "2026-01-01T10:00:00"}},
     "consent.sms.at", "time zone"),
    ({"fax": {"granted": True, "source": "form", "text_version": "v1"}}, "consent.fax", ""),
    ({"sms": {"granted": True, "source": "form", "text_version": "v1", "ip": "1.2.3.4"}}, "consent.sms.ip", ""),
])
def test_bad_consent_is_refused_naming_the_field(consent, where, why):
    found = problems({"consent": consent})
    assert any(loc.startswith(where) and why in msg for loc, msg in found), found


def test_consent_contradicting_the_channel_switch_is_refused():
    found = problems({"sms_enabled": False, "consent": {"sms": {"granted": True, "source": "f", "text_version": "1"}}})
    assert any(loc == "consent" and "contradicts" in msg for loc, msg in found), found


def test_stored_consent_with_a_text_version_reads_back():
    row = {"email_enabled": True, "sms_enabled": True, "push_enabled": True, "in_app_enabled": True,
           "frequency_cap": {}, "categories": {}, "updated_at": NOW, "version": 2,
           "consent": {"sms": {"granted": True, "at": NOW.isoformat(), "source": "sms_keyword", "text_version": "v9"}}}
    prefs = stored_preferences(7, row)
    assert prefs.consent["sms"].text_version == "v9" and prefs.to_update().consented == ["sms"]


def test_an_opt_in_channel_nobody_decided_about_shows_consent_not_granted():
    fresh = stored_preferences(7, None, ["sms"])
    assert fresh.sms_enabled and fresh.consent["sms"].model_dump() == {
        "granted": False, "at": None, "source": "default", "text_version": None}
    assert fresh.consent["email"].granted and fresh.to_update().consented == []
    row = {"email_enabled": True, "sms_enabled": True, "push_enabled": True, "in_app_enabled": True,
           "frequency_cap": {}, "categories": {}, "updated_at": NOW, "version": 1,
           "consent": {"sms": {"granted": True, "at": NOW.isoformat(), "source": "signup_form", "text_version": "v3"}}}
    assert stored_preferences(7, row, ["sms"]).consent["sms"].granted
