"""A tiny byte-level BPE tokenizer with Janus-Pro's special tokens, trained offline."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# The strings are DeepSeek-LLM's / Janus-Pro's own, so prompts and the chat template
# written for the real checkpoint tokenize the same way on the tiny one.
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
IMAGE = "<image_placeholder>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT, IMAGE, BOI, EOI]
# JanusProcessor reads tokenizer.image_token / boi_token / eoi_token (named extra tokens).
IMAGE_TOKENS = {"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI}

# Same chat template the transformers Janus converter ships with the real checkpoint.
CHAT_TEMPLATE = (
    "{%set seps=['\n\n','<｜end▁of▁sentence｜>']%}"
    "{%set i=0%}"
    "{%for message in messages%}"
    "{%if message['role']|lower=='user'%}"
    "<|User|>: "
    "{%elif message['role']|lower=='assistant'%}"
    "<|Assistant|>:{%if not (loop.last and not add_generation_prompt and message['content'][0]['type']=='text' "
    "and message['content'][0]['text']=='')%} {%endif%}"
    "{%else%}"
    "{{message['role'].capitalize()}}: "
    "{%endif%}"
    "{%for content in message['content']%}"
    "{%if content['type']=='image'%}"
    "{%if not loop.first%}{{'\n'}}{%endif%}"
    "<image_placeholder>"
    "{%if not loop.last%}{{'\n'}}{%endif%}"
    "{%elif content['type']=='text'%}"
    "{%set text=content['text']%}"
    "{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}"
    "{{' '+text}}"
    "{%else%}"
    "{{text}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if not loop.last or add_generation_prompt%}"
    "{%if message['role']|lower=='user'%}"
    "{{seps[0]}}"
    "{%else%}"
    "{{seps[1]}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)

# Enough English to give BPE a few hundred merges; byte-level fallback covers the rest.
CORPUS = [
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language.",
    "Describe this image in detail. What is shown in the picture? How many objects are there?",
    "A photo of a cat sitting on a red sofa next to a window with the sun shining in.",
    "A dog running under the rain in a city street at night, neon lights, cinematic.",
    "An oil painting of a mountain lake at sunrise, mist over the water, highly detailed.",
    "A bowl of fruit on a wooden table: apples, oranges, bananas and grapes.",
    "The chart shows the revenue of the company for each quarter of the year.",
    "Answer the question using a single word or phrase. Yes. No. Two. Three. Blue. Green.",
    "A futuristic city skyline with flying cars, digital art, trending on artstation, 4k.",
    "The table lists the name, age, and country of each person in the document.",
    "A small house in the forest, snow on the roof, smoke rising from the chimney.",
    "Portrait of a woman wearing a hat, soft light, shallow depth of field, 85mm.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 100 2025",
    # the shapes world (stages/shapes_world.py): its words get whole tokens
    "a red circle, a yellow square, a green triangle, a cyan cross, a blue circle, a magenta square.",
    "two red circles and three blue crosses on the left, on the right, at the top, at the bottom, in the center.",
    "What colour is the shape? What color are the objects? Which shape is shown? Where is the object? "
    "How many objects are there? Count the shapes. The picture shows one object on a white background.",
]


def train_tokenizer(vocab_size: int = 512, corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` and wrap it with Janus's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or CORPUS, trainer=trainer)
    # DeepSeek-LLM prepends BOS to every encoded sequence; the CFG masking in
    # JanusForConditionalGeneration.generate relies on BOS being there.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=IMAGE_TOKENS,
        padding_side="left",
        model_max_length=4096,
        chat_template=CHAT_TEMPLATE,
    )
