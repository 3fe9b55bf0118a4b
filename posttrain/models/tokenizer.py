"""The character-level tokenizer of the built-in tasks (sorting, equations, arithmetic).

Every character is one token, the space included, so a task's text and its token ids map one to
one and a verifier can work on the decoded string without worrying about merges. It is built with
`tokenizers` (no download) and wrapped as a `PreTrainedTokenizerFast`, so it saves with
`save_pretrained` and reloads with plain `AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

TASK_ALPHABET: tuple[str, ...] = (
    *SPECIAL_TOKENS,
    *"0123456789",  # ids 4..13
    "=",  # id 14; ids 0..14 match the 16-token benchmark workload, keep them
    *"+-*/(),.:;?! ",  # ids 15..27 (27 is the space)
    *"abcdefghijklmnopqrstuvwxyz",  # ids 28..53
    *"ABCDEFGHIJKLMNOPQRSTUVWXYZ",  # ids 54..79
)
"""The ordered vocabulary: token id i is `TASK_ALPHABET[i]` (80 tokens)."""

TASK_MAX_LENGTH = 256
"""`model_max_length` of the tokenizer; equals the tiny models' `max_position_embeddings`."""


def build_task_tokenizer() -> PreTrainedTokenizerFast:
    """The character-level task tokenizer over `TASK_ALPHABET`.

    - `encode(text, add_special_tokens=False)`: one id per character; a character outside the
      alphabet (a newline, 'é', ...) becomes `<unk>` (id 3).
    - `add_special_tokens=True` (the default of `__call__`/`encode`) prepends `<bos>` only: the
      response, not the prompt, ends with `<eos>`, and the sampler adds that.
    - `decode(ids)` joins the characters with nothing in between, so `decode(encode(text)) ==
      text` for any text over the alphabet (spaces kept as they are).
    - No chat template: tiny models read the plain task format.
    """
    vocab = {token: index for index, token in enumerate(TASK_ALPHABET)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # One pre-token per character. `[\s\S]` rather than `.` so that a newline is split off too
    # (and then maps to <unk>) instead of being dropped by the regex.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse concatenates the pieces: the default word-level decoder would join them with spaces.
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B",
        special_tokens=[(BOS_TOKEN, BOS_ID)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=TASK_MAX_LENGTH,
        # The default clean-up would glue punctuation to the previous word ("a ," -> "a,"),
        # which breaks the exact round trip.
        clean_up_tokenization_spaces=False,
    )
    _check_ids(tokenizer)
    return tokenizer


def _check_ids(tokenizer: PreTrainedTokenizerFast) -> None:
    """Fail loudly if a `tokenizers`/`transformers` upgrade moved a special token's id."""
    expected = {PAD_TOKEN: PAD_ID, BOS_TOKEN: BOS_ID, EOS_TOKEN: EOS_ID, UNK_TOKEN: UNK_ID}
    for token, token_id in expected.items():
        got = tokenizer.convert_tokens_to_ids(token)
        if got != token_id:
            raise RuntimeError(f"task tokenizer: {token} has id {got}, expected {token_id}")
    if len(tokenizer) != len(TASK_ALPHABET):
        raise RuntimeError(
            f"task tokenizer: {len(tokenizer)} tokens, expected {len(TASK_ALPHABET)}"
        )
