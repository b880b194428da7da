"""The one kind of command an SSH session may run: a git service on one repository.

``git clone git@host:owner/repo.git`` makes ssh run ``git-upload-pack 'owner/repo.git'`` on the
server; the ``ssh://`` form sends ``'/owner/repo.git'``. Nothing else is run, and the path is
checked against the names a repository can have, so no quoting or traversal reaches a shell or
the file system (there is no shell: git is started with an argument list).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bulwark.errors import InvalidInput
from bulwark.names import check_login, check_repo_name

SERVICES = ("upload-pack", "receive-pack", "upload-archive")
# ``git-upload-pack 'path'`` or ``git upload-pack 'path'``; the path quoted as git quotes it, or bare.
_COMMAND = re.compile(r"git[ -](?P<service>[a-z-]+) +(?:'(?P<quoted>[^']*)'|(?P<bare>[^\s'\"]+))")


class NotAGitCommand(InvalidInput):
    """The session asked for something other than a git service on a repository."""


@dataclass(frozen=True)
class GitCommand:
    service: str  # "upload-pack", "receive-pack" or "upload-archive"
    owner: str
    name: str  # without ".git"

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


def parse(command: str) -> GitCommand:
    """The git service and repository ``command`` asks for, or ``NotAGitCommand`` saying why not."""
    match = _COMMAND.fullmatch(command.strip())
    if match is None or match["service"] not in SERVICES:
        raise NotAGitCommand("only git-upload-pack, git-receive-pack and git-upload-archive can be run here")
    path = match["quoted"] if match["quoted"] is not None else match["bare"]
    parts = path.strip("/").split("/")
    if len(parts) != 2 or path.count("/") > 2 or path.endswith("/"):
        raise NotAGitCommand(f"{path!r} does not name a repository: give owner/repository")
    owner, name = parts[0], parts[1].removesuffix(".git")
    try:
        check_login(owner)
        check_repo_name(name)
    except InvalidInput:
        raise NotAGitCommand(f"{path!r} does not name a repository: give owner/repository") from None
    return GitCommand(match["service"], owner, name)
