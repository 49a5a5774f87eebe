"""The one exception type a featurizer raises for a file it cannot use."""


class InvalidInputError(ValueError):
    """The file cannot become an example; the message is the reason shown in the error rows."""
