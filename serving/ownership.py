"""Who owns what: training tasks, templates and store documents belong to the user whose token made them.

Rules (README "Security"):

- A record made through an RPC belongs to the caller: the user of its bearer token (serving.auth). A server
  without tokens cannot tell callers apart: every caller is the one anonymous user (`ANONYMOUS`, stored as the
  owner ""), and everything made through it belongs to that user.
- A caller sees, stops, pauses, resumes and deletes its own records only; a user marked `admin` in the token
  file sees and controls every record. Another user's task id, template name or document id answers exactly as
  an unknown one does (404, the same message), so ids cannot be probed.
- Records made before ownership existed (databases migrated from an earlier version) and records made by the
  local CLI without `--owner` belong to the anonymous user: with tokens configured only admins see them.
  Turning tokens off does not publish anybody's records: the anonymous caller still sees only its own.
- Names and ids are one namespace per server (task ids are assigned by the calling platform, seed 000):
  starting a task with an id that is in use, or creating a template with a name in use, is refused with 409
  whoever holds it. That answer says the name is taken and nothing else (not by whom, not what it holds).

Code that runs outside any RPC (the local CLI, a training worker) passes no viewer: it has the data folder's
files and sees everything.
"""
from serving.auth import User, current_user

#: The caller of a server without tokens, and the owner of records made without one.
ANONYMOUS = User("", admin=False)


def caller():
    """The `User` on whose behalf the current RPC runs: its token's user, or ANONYMOUS without tokens."""
    user = current_user()
    return ANONYMOUS if user is None else user


def can_see(owner, viewer):
    """True when `viewer` (a User; None: local code, unrestricted) may see a record owned by `owner`."""
    return viewer is None or viewer.admin or (owner or "") == viewer.name


def owner_clause(viewer, column="owner"):
    """(SQL condition, parameters) that keeps the rows `viewer` may see: ("1", ()) when it sees them all."""
    if viewer is None or viewer.admin:
        return "1", ()
    return f"{column} = ?", (viewer.name,)
