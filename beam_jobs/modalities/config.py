"""Settings as frozen dataclasses whose fields declare their own command-line flags.

Owns the one way configuration reaches code: a config dataclass lists its
fields with `option(default, help, flag=...)`, `add_flags` turns them into
argparse flags (in the --help groups the class's `FLAG_GROUPS` names, or one
group for the whole class), `from_flags` builds and validates the config, and
a bad value raises `ConfigError` carrying the offending fields, which
`flag_error` turns into a message that names the flags. `beam_jobs.preprocess`
and `trainer.train` both use it. `SplitConfig` lives here as the one setting
shared by the pipeline, the app and the report; each modality's featurization
config lives beside its featurizer (`beam_jobs.modalities.audio`,
`beam_jobs.modalities.image`).
"""
import argparse
import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; `fields` names the dataclass fields at fault (may be empty)."""

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()):
        super().__init__(message)
        self.fields = fields


def option(default, help_text: str, *, flag: str | None = None):
    """A dataclass field with its flag's help text; `flag` overrides the flag name (default: the field name)."""
    return dataclasses.field(default=default, metadata={"help": help_text, "flag": flag})


def require(ok: bool, fields: str | tuple[str, ...], value: Any, expectation: str) -> None:
    """Raises ConfigError("name=value is invalid: it must be EXPECTATION") unless `ok`."""
    if not ok:
        fields = (fields,) if isinstance(fields, str) else fields
        raise ConfigError(f"{' + '.join(fields)}={value!r} is invalid: it must be {expectation}", fields=fields)


def flag_name(config_class, field_name: str) -> str:
    """The command-line flag (without dashes) of a field of `config_class`."""
    field = next(field for field in dataclasses.fields(config_class) if field.name == field_name)
    return field.metadata.get("flag") or field.name


def add_flags(parser: argparse.ArgumentParser, config_class, *, title: str | None = None) -> None:
    """One --flag per field of `config_class`, with the field's default and help; bools get --no-flag too.

    The flags go in argument groups of `parser`, so that --help lists them by topic: a class whose
    `FLAG_GROUPS` maps field names to titles starts a group at each of those fields; the fields before the
    first, or all of them when it has none, go in a group titled `title` (or in no group, for None).
    """
    starts = getattr(config_class, "FLAG_GROUPS", {})
    target = parser.add_argument_group(title) if title else parser
    for field in dataclasses.fields(config_class):
        if field.name in starts:
            target = parser.add_argument_group(starts[field.name])
        help_text = f"{field.metadata['help']} (default: {field.default})"
        name = f"--{flag_name(config_class, field.name)}"
        if field.type is bool:
            target.add_argument(name, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
        else:
            target.add_argument(name, type=field.type, default=field.default, help=help_text)


def from_flags(config_class, args: argparse.Namespace):
    """The validated `config_class` from parsed flags; raises ConfigError."""
    values = {field.name: getattr(args, flag_name(config_class, field.name))
              for field in dataclasses.fields(config_class)}
    return config_class(**values).validate()


def flag_error(config_class, error: ConfigError) -> str:
    """The error's message prefixed with the flags of its fields, e.g. "--window_ms: window_ms=0.5 is ..."."""
    if not error.fields:
        return str(error)
    flags = " + ".join(f"--{flag_name(config_class, name)}" for name in error.fields)
    return f"{flags}: {error}"


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    validation_percent: float = option(10.0, "share of files hashed into validation")
    test_percent: float = option(10.0, "share of files hashed into test")

    def validate(self) -> "SplitConfig":
        require(0 <= self.validation_percent < 100, "validation_percent", self.validation_percent, "in [0, 100)")
        require(0 <= self.test_percent < 100, "test_percent", self.test_percent, "in [0, 100)")
        require(self.validation_percent + self.test_percent < 100, ("validation_percent", "test_percent"),
                self.validation_percent + self.test_percent, "< 100 so that training keeps some files")
        return self


SILENCE_LABEL = "_silence_"  # Speech Commands' names of keyword spotting's two extra classes
UNKNOWN_LABEL = "_unknown_"


@dataclasses.dataclass(frozen=True)
class KeywordConfig:
    """Keyword spotting's extra classes, as Speech Commands' trainer makes them, for modalities with
    background noise (audio): `_unknown_` holds class folders outside --wanted_words, `_silence_` clips cut
    from ROOT/_background_noise_. Each is a share of a split's wanted examples."""
    wanted_words: str = option("", "comma-separated class folders that keep their own labels; the others become "
                                   "_unknown_ examples. Empty: every class folder is its own label")
    unknown_percentage: float = option(10.0, "with --wanted_words: _unknown_ examples per split, as a percentage "
                                             "of the split's wanted examples; the other files are left out (counted)")
    silence_percentage: float = option(0.0, "_silence_ examples per split, as a percentage of its wanted examples, "
                                            "cut from the recordings in ROOT/_background_noise_; 0 = none")

    @property
    def wanted(self) -> tuple[str, ...] | None:
        """The wanted class folders, or None when every class folder is wanted."""
        return tuple(word.strip() for word in self.wanted_words.split(",")) if self.wanted_words.strip() else None

    @property
    def active(self) -> bool:
        return self.wanted is not None or self.silence_percentage > 0

    def validate(self) -> "KeywordConfig":
        wanted = self.wanted or ()
        require(all(wanted) and len(set(wanted)) == len(wanted) and not any(
            word.startswith("_") or "/" in word for word in wanted), "wanted_words", self.wanted_words,
            "distinct class folder names, none empty, none with '/' or a leading '_'")
        require(0 <= self.unknown_percentage <= 100, "unknown_percentage", self.unknown_percentage, "in [0, 100]")
        require(0 <= self.silence_percentage <= 100, "silence_percentage", self.silence_percentage, "in [0, 100]")
        return self
