"""A new repository's first commit: a README, written straight into the repository's objects.

Standalone and HA only: the commit is recorded like a push, so replicas fetch it. A cluster
repository's objects must reach a majority of its replicas, which only a push does; the form
does not offer the README there.
"""

from __future__ import annotations

from bulwark.git.runner import ZERO_OID
from bulwark.models import Account, Repository
from bulwark.node import Node


def supported(node: Node) -> bool:
    return node.cluster is None


def write_readme(node: Node, repo: Repository, author: Account) -> str | None:
    """The new commit's id, or None where a README cannot be written here."""
    if not supported(node):
        return None
    git = node.git
    where = ["--git-dir", str(git.path(repo.storage_id))]
    text = f"# {repo.name}\n" + (f"\n{repo.description}\n" if repo.description else "")
    blob = git.run([*where, "hash-object", "-w", "--stdin"], input=text.encode()).stdout.decode().strip()
    tree = git.run([*where, "mktree"], input=f"100644 blob {blob}\tREADME.md\n".encode()).stdout.decode().strip()
    email = author.email or f"{author.login}@users.noreply.localhost"
    person = {"GIT_AUTHOR_NAME": author.name or author.login, "GIT_AUTHOR_EMAIL": email,
              "GIT_COMMITTER_NAME": author.name or author.login, "GIT_COMMITTER_EMAIL": email}
    commit = git.run([*where, "commit-tree", tree, "-m", "Initial commit"], extra_env=person).stdout.decode().strip()
    ref = f"refs/heads/{repo.default_branch}"
    git.update_ref(repo.storage_id, ref, commit, ZERO_OID)
    node.record_push(repo, [(ZERO_OID, commit, ref)], author)
    return commit
