"""The error a build raises for what its user can fix; the CLI prints its message as is."""


class BuildError(Exception):
    """The build cannot go on; the message names the input line, file or setting to change."""
