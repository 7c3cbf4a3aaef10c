"""Integer codes shared by the native ops and the Python side, written once.

The phase, schedule, finish-reason and allowed-set codes mirror the enums in
cpp/include/wavalign/interleave.h (InterleavePhase, InterleaveSchedule, FinishReason,
AllowedSet); change both together. The token types are what ModalitySpec.token_types
returns and every loss reads; they double as the per-id modality codes of
ModalitySpec.modality_table (the native ``id_modality``), plus NEITHER.

Pure constants: importing this module pulls in neither torch nor the native extension.
"""

from __future__ import annotations

# Token types / per-id modality codes.
TEXT = 0
SPEECH = 1
NOT_RESPONSE = -1  # token type of a position outside the response (prompt, padding)
NEITHER = 2  # modality of an id in no modality range (e.g. padding rows of an enlarged embedding)

# InterleavePhase: a row's phase in the interleave state machine.
PHASE_TEXT = 0
PHASE_SPEECH = 1
PHASE_CLOSING = 2  # after end-of-audio: only EOS may follow

# FinishReason: why a row stopped (FINISH_RUNNING = it has not).
FINISH_RUNNING = 0
FINISH_EOS = 1
FINISH_LENGTH = 2
FINISH_END_AUDIO = 3
FINISH_NAMES = {FINISH_RUNNING: "running", FINISH_EOS: "eos", FINISH_LENGTH: "length",
                FINISH_END_AUDIO: "end_of_audio"}

# AllowedSet: rows of ModalitySpec.interleave_table, the ids a row may sample next.
SET_TEXT = 0  # text phase
SET_SPEECH = 1  # speech phase
SET_SWITCH_TO_SPEECH = 2  # sequential, text budget spent: begin_audio (or speech ids)
SET_EOS_ONLY = 3  # closing, or a finished row
SET_TEXT_ONLY = 4  # ratio: the first token of a text chunk after a speech block
SET_END_AUDIO_ONLY = 5  # ratio: the last block is full (its text chunk ran past quota)
N_ALLOWED_SETS = 6

# InterleaveSchedule: Schedule.kind -> native code.
SCHEDULE_KINDS = ("sequential", "chunked", "free", "ratio")
SCHEDULE_CODES = {kind: code for code, kind in enumerate(SCHEDULE_KINDS)}  # sequential 0 ... ratio 3
