"""The etcd metadata store, for cluster nodes.

Every node of a cluster opens an :class:`EtcdStore` on the same etcd cluster, so all
of them share one set of accounts, tokens and repositories, and a write made through
one node is seen by the next read on any other (etcd reads are linearizable).

Key layout, under the store's prefix (``/bulwark/store/`` by default). ``<id>`` is a
decimal id zero-padded to 12 digits, so that a range read returns records in id
order; index values are plain decimal ids::

    accounts/<id>                         the account as JSON, with its password hash
    logins/<folded login>                 -> account id; users and orgs share this namespace
    dependents/<account id>               empty; rewritten by every write that adds a record
                                          depending on the account (see below)
    tokens/<id>                           the token as JSON
    token-hashes/<token hash>             -> token id
    memberships/<org id>/<user id>        the role
    repos/<id>                            the repository as JSON
    repo-names/<owner id>/<folded name>   -> repository id
    storage-ids/<storage id>              -> repository id
    collaborators/<repo id>/<user id>     the permission, as its number
    member-of/<user id>/<org id>          (empty) a membership, found from the user's side
    collaborates/<user id>/<repo id>      (empty) a collaboration, found from the user's side
    indexes                               which of the indexes above existing data has
    ssh-keys/<id>                         the SSH key (a user's or a deploy key) as JSON
    ssh-fingerprints/<fingerprint>        -> SSH key id; one namespace for the whole site
    ssh-keys-of/<user id>/<key id>        (empty) a user's key, found from the user's side
    deploy-keys-of/<repo id>/<key id>     (empty) a deploy key, found from the repository's side
    repo-dependents/<repo id>             empty; rewritten by every write that adds a deploy key
    ssh-host-keys/<algorithm>             the server's host key of that algorithm as JSON
    settings/<key>                        the value, as given
    maintenance                           the maintenance state as JSON
    seq/<kind>                            the last id handed out (kinds: accounts, tokens, repos, ssh-keys)

Logins and repository names are folded to lower case in ASCII only, as SQLite's
``COLLATE NOCASE`` does, so both backends agree on what clashes.

How writes stay atomic: a write method reads what its decision depends on, decides,
and commits all its changes in ONE transaction whose compares say "nothing I relied
on has changed": ``Compare.absent`` on the index keys it claims (so two nodes racing
for a login or a name cannot both win), ``Compare.unchanged`` on the mod revision of
the records it rewrites and of the id counter it increments, ``Compare.present`` on
the parents it attaches to. When another writer got in between, the transaction does
nothing and the method starts over from the read, now seeing that writer's change;
this is how the loser of a race gets ``AlreadyExists``. It gives up with ``Conflict``
after ``MAX_ATTEMPTS`` collisions in a row.

Additions cannot be detected by comparing keys that already exist, so every write
that adds a record depending on an account (a token, a membership on either side, a
collaboration, a repository it owns or receives) also rewrites the account's
``dependents`` key, and ``delete_account`` compares that key: a dependent added after
``delete_account`` read the account's records makes it start over instead of leaving
an orphan behind. A deploy key depends on its repository and on the repository's owner:
adding one rewrites the repository's ``repo-dependents`` key, which ``delete_repo``
compares, and the owner's ``dependents`` key, which ``delete_account`` compares.

Transaction size: etcd refuses a transaction with more than ``--max-txn-ops``
comparisons or requests (128 by default; Bulwark's clusters start etcd with 4096).
Only ``delete_account`` grows with the data (about two requests per token, SSH key,
membership and collaboration and six per repository of the account). It is never split into
several transactions, as that would give up its atomicity: above ``max_txn_ops`` it
raises :class:`~bulwark.errors.StoreError` without changing anything, and if etcd's
own limit is lower than ``max_txn_ops`` etcd refuses the transaction as a whole.

Modules: keys, codec, readlog, base (shared), one per domain (accounts, tokens, repos, ssh, settings), store.
"""

from bulwark.store.etcd.base import DEFAULT_PREFIX, INDEXES, MAX_ATTEMPTS, MAX_TXN_OPS, _backoff, _Collided
from bulwark.store.etcd.codec import (
    _check_after,
    _check_page,
    _corrupt,
    _decode,
    _doc,
    _dump_json,
    _dump_scopes,
    _enum,
    _flag,
    _index_id,
    _int,
    _last_id,
    _load_account,
    _load_host_key,
    _load_optional_time,
    _load_repo,
    _load_ssh_key,
    _load_time,
    _load_token,
    _optional_int,
    _optional_text,
    _page,
    _pair,
    _still,
    _text,
)
from bulwark.store.etcd.keys import _ASCII_LOWER, ID_WIDTH, _fold, _Keys, _pad
from bulwark.store.etcd.readlog import ReadLog
from bulwark.store.etcd.repos import REPO_ID_BLOCK
from bulwark.store.etcd.store import EtcdStore

# Private helpers too: the store's companions on the same etcd (webhooks/store_etcd.py) import them from here.
__all__ = [
    "DEFAULT_PREFIX",
    "ID_WIDTH",
    "INDEXES",
    "MAX_ATTEMPTS",
    "MAX_TXN_OPS",
    "REPO_ID_BLOCK",
    "_ASCII_LOWER",
    "EtcdStore",
    "ReadLog",
    "_Collided",
    "_Keys",
    "_backoff",
    "_check_after",
    "_check_page",
    "_corrupt",
    "_decode",
    "_doc",
    "_dump_json",
    "_dump_scopes",
    "_enum",
    "_flag",
    "_fold",
    "_index_id",
    "_int",
    "_last_id",
    "_load_account",
    "_load_host_key",
    "_load_optional_time",
    "_load_repo",
    "_load_ssh_key",
    "_load_time",
    "_load_token",
    "_optional_int",
    "_optional_text",
    "_pad",
    "_page",
    "_pair",
    "_still",
    "_text",
]
