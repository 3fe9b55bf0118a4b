"""The character-level task tokenizer: the id contract, exact round trips, save/reload."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from posttrain.models.tokenizer import TASK_ALPHABET, build_task_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_task_tokenizer()


def test_alphabet_layout_matches_the_contract():
    # Written out by hand from the contract, not derived from the module's own expression.
    expected = (
        ["<pad>", "<bos>", "<eos>", "<unk>"]
        + ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "="]
        + ["+", "-", "*", "/", "(", ")", ",", ".", ":", ";", "?", "!", " "]
        + [chr(code) for code in range(ord("a"), ord("z") + 1)]
        + [chr(code) for code in range(ord("A"), ord("Z") + 1)]
    )
    assert list(TASK_ALPHABET) == expected
    assert len(TASK_ALPHABET) == 80  # 4 + 11 + 13 + 26 + 26


def test_special_token_ids(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id) == (0, 1)
    assert (tokenizer.eos_token_id, tokenizer.unk_token_id) == (2, 3)
    assert len(tokenizer) == 80
    assert tokenizer.chat_template is None


def test_encode_digits_and_equals(tokenizer):
    # '3' -> 4 + 3 = 7, '1' -> 4 + 1 = 5, '=' -> 14.
    assert tokenizer.encode("31=", add_special_tokens=False) == [7, 5, 14]
    # add_special_tokens prepends <bos> (1) only, no <eos>.
    assert tokenizer.encode("31=") == [1, 7, 5, 14]
    assert tokenizer("31=").input_ids == [1, 7, 5, 14]


def test_every_character_is_one_token_with_its_index(tokenizer):
    # Space (27), 'a' (28), 'z' (53), 'A' (54), 'Z' (79), '?' (25), '!' (26).
    assert tokenizer.encode(" az AZ?!", add_special_tokens=False) == [
        27,
        28,
        53,
        27,
        54,
        79,
        25,
        26,
    ]


@pytest.mark.parametrize(
    "text",
    ["3x + 7 = 22;x=5", "  leading and trailing  ", "a , b . c", "What is (12-3)*4? 36!", ""],
)
def test_decode_round_trip_is_exact(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([1, *ids, 2], skip_special_tokens=True) == text


def test_unknown_characters_become_unk(tokenizer):
    # 'é', a newline and '#' are outside the alphabet: one <unk> (3) each; '1' is 5.
    assert tokenizer.encode("é\n#1", add_special_tokens=False) == [3, 3, 3, 5]


def test_save_and_reload_through_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Sort: 9,1,5 = 1,5,9!"
    assert reloaded.encode(text) == tokenizer.encode(text)
    assert reloaded.encode(text, add_special_tokens=False) == tokenizer.encode(
        text, add_special_tokens=False
    )
    assert reloaded.decode(reloaded.encode(text, add_special_tokens=False)) == text
    assert (reloaded.pad_token_id, reloaded.bos_token_id, reloaded.eos_token_id) == (0, 1, 2)
    assert reloaded.unk_token_id == 3
