"""Request and response bodies of the API (DESIGN.md "API contract")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Task = Literal["seg", "pos", "ner"]

EXAMPLE_TEXT = "江泽民在北京大学发表讲话。"


def _check_text(value: str) -> str:
    # Lone surrogates cannot be encoded as UTF-8, so no answer could carry them back.
    for position, character in enumerate(value):
        if "\ud800" <= character <= "\udfff":
            raise ValueError(f"character {position} is a lone UTF-16 surrogate (\\u{ord(character):04x}), which is not a Unicode character")
    return value


# Checked per item, so that an error names the text: texts.3, not texts.
Text = Annotated[str, AfterValidator(_check_text)]


class DictEntryIn(BaseModel):
    """A user-dictionary entry for one request (as a line of the NER_USER_DICT file)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"word": "字节跳动", "pos": "nt"}, {"word": "抖音", "pos": "nz", "type": "O"}]})

    word: Text = Field(min_length=1, max_length=50, pattern=r"^\S+$", description="The word, without whitespace; each occurrence becomes one token.")
    pos: str | None = Field(None, pattern=r"^[a-z]+$", description="Its POS: a tag of the model's set (GET /model: labels.pos) is forced in decoding, another is given to the token as it is. nr, ns, nt also make it a PER, LOC, ORG entity.")
    type: Literal["PER", "LOC", "ORG", "O"] | None = Field(None, description="Entity type, O for none; default: from the POS (nr/ns/nt), else none; without POS the model decides.")


class TagRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"text": EXAMPLE_TEXT}, {"texts": [EXAMPLE_TEXT, "张三去了上海。"], "tasks": ["seg", "ner"]}],
            # Exactly one of a string `text` or a non-empty list `texts` (what `_one_of` checks), so
            # that clients and fuzzers reading the schema know which bodies are valid.
            "oneOf": [
                {"required": ["text"], "properties": {"text": {"type": "string"}, "texts": {"type": "null"}}},
                {"required": ["texts"], "properties": {"texts": {"type": "array", "minItems": 1}, "text": {"type": "null"}}},
            ],
        },
    )

    text: Text | None = Field(None, description="One text. Give either `text` or `texts`.")
    texts: list[Text] | None = Field(None, description="Several texts, tagged independently.")
    tasks: list[Task] = Field(default_factory=lambda: ["seg", "pos", "ner"], min_length=1, description="Any of seg, pos, ner; pos implies seg.")
    user_dict: list[DictEntryIn] | None = Field(
        None, description="Extra user-dictionary entries for this request only (at most NER_MAX_REQUEST_ENTRIES, default 100); they win over the service's dictionary. Overlaps: leftmost, then longest."
    )
    report_dictionary: bool = Field(False, strict=True, description="Add to each result the `dictionary` entries applied to its text.")
    whole_names: bool | None = Field(None, strict=True, description="Merge the tokens of a person's name into one token tagged nr (needs seg and ner); default: NER_WHOLE_NAMES.")

    @model_validator(mode="after")
    def _one_of(self) -> TagRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` (a string) or `texts` (a list of strings)")
        if self.texts is not None and not self.texts:
            raise ValueError("`texts` is empty; give at least one text")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class TokenOut(BaseModel):
    text: str
    start: int = Field(description="Offset of the first code point in the text as sent.")
    end: int = Field(description="Offset after the last code point (end-exclusive).")
    pos: str | None = Field(None, description="PKU POS tag; null when only seg was asked for. Whitespace runs are tokens with pos 'w'.")


class EntityOut(BaseModel):
    text: str
    type: Literal["PER", "LOC", "ORG"]
    start: int
    end: int


class DictionaryHitOut(BaseModel):
    text: str
    start: int
    end: int
    pos: str | None
    type: Literal["PER", "LOC", "ORG", "O"] | None


class ResultOut(BaseModel):
    text: str
    tokens: list[TokenOut]
    entities: list[EntityOut]
    dictionary: list[DictionaryHitOut] | None = Field(None, description="Only with `report_dictionary`: the user-dictionary entries applied, in text order.")


class ModelRef(BaseModel):
    name: str
    version: str


class TagResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "default", "version": "1.3.0"},
                    "results": [
                        {
                            "text": "江泽民在北京",
                            "tokens": [
                                {"text": "江泽民", "start": 0, "end": 3, "pos": "nr"},
                                {"text": "在", "start": 3, "end": 4, "pos": "p"},
                                {"text": "北京", "start": 4, "end": 6, "pos": "ns"},
                            ],
                            "entities": [
                                {"text": "江泽民", "type": "PER", "start": 0, "end": 3},
                                {"text": "北京", "type": "LOC", "start": 4, "end": 6},
                            ],
                        }
                    ],
                }
            ]
        }
    )

    model: ModelRef
    results: list[ResultOut]


class ErrorOut(BaseModel):
    error: str = Field(description="What was wrong, for a person.")
    detail: list | dict | str | None = None
    error_id: str | None = Field(None, description="Also in the server log (500 only).")
