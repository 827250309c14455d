import pickle
import re
import statistics

import pytest

from core.errors import ConfigError, DeidError
from deid import Vault

SECRET = b"0123456789abcdef0123456789abcdef"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def test_pseudonym_is_stable_for_same_key_and_secret():
    assert Vault(SECRET).pseudonym("HOSP", "12345678") == Vault(SECRET).pseudonym("HOSP", "12345678")


def test_pseudonym_differs_for_a_different_secret():
    other = b"fedcba9876543210fedcba9876543210"
    assert Vault(SECRET).pseudonym("HOSP", "12345678") != Vault(other).pseudonym("HOSP", "12345678")


def test_pseudonym_differs_for_different_value_or_authority():
    vault = Vault(SECRET)
    assert vault.pseudonym("HOSP", "12345678") != vault.pseudonym("HOSP", "12345679")
    assert vault.pseudonym("HOSP", "12345678") != vault.pseudonym("CLINIC", "12345678")


def test_pseudonym_normalises_authority_case_and_whitespace_and_value_whitespace():
    vault = Vault(SECRET)
    expected = vault.pseudonym("HOSP", "12345678")
    assert vault.pseudonym("hosp ", "12345678") == expected
    assert vault.pseudonym("  Hosp", " 12345678\t") == expected
    # full-width digits, as some Chinese systems send them
    assert vault.pseudonym("HOSP", "１２３４５６７８") == expected


def test_pseudonym_value_stays_case_sensitive():
    vault = Vault(SECRET)
    assert vault.pseudonym("HOSP", "a123") != vault.pseudonym("HOSP", "A123")


def test_pseudonym_does_not_confuse_field_boundaries():
    vault = Vault(SECRET)
    assert vault.pseudonym("AB", "C123") != vault.pseudonym("A", "BC123")


def test_pseudonym_is_fhir_id_safe_and_does_not_contain_the_value():
    pseudonym = Vault(SECRET).pseudonym("HOSP", "12345678")
    assert FHIR_ID.fullmatch(pseudonym)
    assert "12345678" not in pseudonym


def test_empty_identifier_value_is_refused():
    with pytest.raises(DeidError):
        Vault(SECRET).pseudonym("HOSP", "  ")


def test_short_secret_and_bad_shift_bound_are_refused():
    with pytest.raises(ConfigError):
        Vault(b"short")
    with pytest.raises(ConfigError):
        Vault(SECRET, date_shift_max_days=0)


def test_date_shift_is_stable_nonzero_and_within_bounds():
    vault = Vault(SECRET, date_shift_max_days=30)
    for i in range(2000):
        pseudonym = vault.pseudonym("HOSP", str(i))
        days = vault.date_shift_days(pseudonym)
        assert days != 0
        assert -30 <= days <= 30
        assert Vault(SECRET).date_shift_days(pseudonym) == days


def test_date_shift_bound_of_one_gives_plus_or_minus_one():
    vault = Vault(SECRET, date_shift_max_days=1)
    seen = {vault.date_shift_days(vault.pseudonym("HOSP", str(i))) for i in range(200)}
    assert seen == {-1, 1}


def test_date_shift_covers_the_range_across_patients():
    vault = Vault(SECRET, date_shift_max_days=30)
    shifts = [vault.date_shift_days(vault.pseudonym("HOSP", f"MRN{i}")) for i in range(1000)]
    assert set(shifts) == set(range(-30, 0)) | set(range(1, 31))
    assert abs(statistics.mean(shifts)) < 3
    negatives = sum(1 for s in shifts if s < 0)
    assert 400 < negatives < 600


def test_date_shift_depends_on_the_secret():
    pseudonyms = [Vault(SECRET).pseudonym("HOSP", str(i)) for i in range(50)]
    other = Vault(b"fedcba9876543210fedcba9876543210")
    assert [Vault(SECRET).date_shift_days(p) for p in pseudonyms] != [
        other.date_shift_days(p) for p in pseudonyms
    ]


def test_resource_id_is_keyed_scoped_and_fhir_safe():
    vault = Vault(SECRET)
    p1, p2 = vault.pseudonym("HOSP", "1"), vault.pseudonym("HOSP", "2")
    rid = vault.resource_id(p1, "Observation", "obs-1")
    assert FHIR_ID.fullmatch(rid) and len(rid) <= 64
    assert rid == Vault(SECRET).resource_id(p1, "Observation", "obs-1")
    assert rid != vault.resource_id(p2, "Observation", "obs-1")
    assert rid != vault.resource_id(p1, "DiagnosticReport", "obs-1")
    assert rid != vault.resource_id(None, "Observation", "obs-1")
    assert rid != p1
    assert "obs" not in rid


def test_vault_does_not_reveal_or_serialise_its_secret():
    vault = Vault(SECRET)
    assert "0123456789abcdef" not in repr(vault)
    with pytest.raises(TypeError):
        pickle.dumps(vault)
    assert not hasattr(vault, "__dict__")


def test_a_token_is_the_same_however_full_the_cache_of_tokens_is():
    """Tokens are remembered per vault (a patient's identifiers recur in every message of
    theirs); filling that memory past its bound changes no token."""
    vault, fresh = Vault(SECRET), Vault(SECRET)
    first = vault.token("quimby")
    words = [f"word{i}" for i in range(100_050)]
    hashes = [vault.token(w) for w in words]
    assert vault.token("quimby") == first == fresh.token("quimby")
    assert [fresh.token(w) for w in words[-3:]] == hashes[-3:] and len(set(hashes)) == len(words)
    assert Vault(b"another-secret-0123456789").token("quimby") != first
