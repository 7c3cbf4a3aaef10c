"""The world's policy: a SentencePiece text vocabulary + speech-unit tokens, a tiny Llama
decoder, the chat format, and SFT on gold interleaved responses.

Saved with save_pretrained (model and tokenizer in one directory), so it loads through
AutoModelForCausalLM / AutoTokenizer exactly like a real spoken dialogue model. (Llama, not
Qwen2: transformers 5 swaps in the architecture's own tokenizer class for Qwen2 configs,
which would mis-tokenise a SentencePiece vocabulary.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from wavalign.modality import ModalitySpec, Schedule, split_response
from wavalign.formats import count_placeholders, user_text

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
BEGIN_AUDIO, END_AUDIO, END_TEXT = "<|begin_of_audio|>", "<|end_of_audio|>", "<|end_of_text|>"
UNK = "<unk>"
SPECIALS = [UNK, PAD, BOS, EOS, USER, ASSISTANT, BEGIN_AUDIO, END_AUDIO, END_TEXT]


def audio_token(unit: int) -> str:
    return f"<|audio_{unit}|>"


def train_tokenizer(texts: Sequence[str], vocab_size: int, n_units: int):
    """A SentencePiece-style BPE text vocabulary (Metaspace word boundaries) learned on
    `texts`, the chat specials first, then n_units `<|audio_i|>` tokens (contiguous ids at the
    end). -> PreTrainedTokenizerFast. BPE rather than unigram: on a small, very repetitive
    corpus unigram pruning splits the commonest words into letters; BPE merges them first."""
    from tokenizers import AddedToken, SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    core = SentencePieceBPETokenizer(unk_token=UNK)
    core.train_from_iterator(list(texts), vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    core.add_special_tokens([AddedToken(audio_token(i), special=True, normalized=False) for i in range(n_units)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=UNK, pad_token=PAD, bos_token=BOS,
                                        eos_token=EOS, additional_special_tokens=[USER, ASSISTANT, BEGIN_AUDIO,
                                                                                  END_AUDIO, END_TEXT])
    tokenizer.padding_side = "left"
    return tokenizer


def modality_spec(tokenizer, schedule: Schedule) -> ModalitySpec:
    """The world's ModalitySpec, read off its tokenizer like any real model's."""
    spec = ModalitySpec.from_tokenizer(tokenizer, schedule=schedule)
    end_text = tokenizer.convert_tokens_to_ids(END_TEXT)
    return ModalitySpec.from_dict({**spec.to_dict(), "end_text": end_text})


class ChatFormat:
    """Builds prompt and response ids; splits generated ids back into channels."""

    def __init__(self, tokenizer, spec: ModalitySpec):
        self.tokenizer = tokenizer
        self.spec = spec
        ids = tokenizer.convert_tokens_to_ids
        self.bos, self.user, self.assistant = ids(BOS), ids(USER), ids(ASSISTANT)
        self.unit_offset = ids(audio_token(0))
        n_units = sum(hi - lo for lo, hi in spec.speech_ranges)
        if spec.speech_ranges != ((self.unit_offset, self.unit_offset + n_units),):
            raise ValueError("the world's speech tokens must be one contiguous block starting at <|audio_0|>")
        self.n_units = n_units
        self.special_ids = frozenset(tokenizer.all_special_ids)  # the property rebuilds a list per call

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def prompt_ids(self, text: str | None = None, units: Sequence[int] | None = None,
                   messages: list[dict] | None = None,
                   audio_units: Sequence[Sequence[int]] | None = None) -> list[int]:
        """User turn as text, speech (units in begin/end-of-audio) or both, then the assistant tag.
        Chat `messages` contribute the user's written words, audio placeholders stripped (this
        format has no system turn); audio_units (one entry per placeholder of the messages, in
        order) follow the text, each in its own begin/end-of-audio block."""
        blocks = [] if units is None else [units]
        if messages is not None:
            if text is not None or units is not None:
                raise ValueError("give a prompt as messages (with audio_units per placeholder), or as text / units")
            expected = sum(count_placeholders(messages))
            if len(audio_units or []) != expected:
                raise ValueError(f"the messages hold {expected} audio placeholder(s) (<|audio|> / <audio>) but "
                                 f"{len(audio_units or [])} audio unit sequence(s) were given")
            text, blocks = user_text(messages) or None, list(audio_units or [])
        elif audio_units is not None:
            raise ValueError("audio_units go with messages (one entry per audio placeholder)")
        if text is None and not blocks:
            raise ValueError("a prompt needs text, speech units, or both")
        ids = [self.bos, self.user]
        if text is not None:
            ids += self.text_ids(text)
        for block in blocks:
            ids += [self.spec.begin_audio] + self.unit_ids(block) + [self.spec.end_audio]
        return ids + [self.assistant]

    def unit_ids(self, units: Sequence[int]) -> list[int]:
        units = [int(u) for u in units]
        if any(not 0 <= u < self.n_units for u in units):
            raise ValueError(f"speech units must lie in [0, {self.n_units})")
        return [self.unit_offset + u for u in units]

    def response_ids(self, text: str, units: Sequence[int]) -> list[int]:
        """Gold response laid out by the spec's schedule and checked against the interleave
        state machine (ModalitySpec.layout_response)."""
        return self.spec.layout_response(self.text_ids(text), self.unit_ids(units))

    def split(self, response: Sequence[int]) -> tuple[str, list[int]]:
        """Generated response ids -> (text channel, speech units); specials are dropped."""
        text_ids, units = split_response(response, self.unit_offset, self.n_units, self.special_ids)
        return self.tokenizer.decode(text_ids).strip(), units


def build_model(vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int, tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


@dataclass
class SFTExample:
    prompt: list[int]
    response: list[int]


def sft(model, examples: list[SFTExample], *, steps: int, batch_size: int, lr: float, seed: int, pad_id: int,
        progress: bool = True) -> list[float]:
    """Teacher-forced cross-entropy on response tokens only; AdamW with warm-up and cosine
    decay. -> per-step losses."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    losses = []
    model.train()
    bar = tqdm(range(steps), desc="SFT", disable=not progress)
    for _ in bar:
        pick = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
        input_ids, labels = collate([examples[i] for i in pick], pad_id)
        attention = labels != -200
        targets = labels.masked_fill(~attention, -100)
        logits = model(input_ids=input_ids, attention_mask=attention.long()).logits  # [B, T, V]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten(),
                                                 ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def collate(batch: list[SFTExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] and labels [B, T]: response ids, -100 on the prompt, -200 on padding."""
    width = max(len(e.prompt) + len(e.response) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.int64)
    labels = torch.full((len(batch), width), -200, dtype=torch.int64)
    for row, e in enumerate(batch):
        p, r = len(e.prompt), len(e.response)
        input_ids[row, : p + r] = torch.tensor(e.prompt + e.response)
        labels[row, :p] = -100
        labels[row, p: p + r] = torch.tensor(e.response)
    return input_ids, labels
