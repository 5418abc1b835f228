"""``perhap token add|list|revoke``: manage the bearer tokens of a token file (``serve --auth``)."""

from __future__ import annotations

import argparse
import sys

from ..errors import InvalidInput
from ..model import check_name
from .common import CommandError


def run_token_add(args: argparse.Namespace) -> int:
    """Create a token and print it once, alone on the first line of stdout."""
    from ..auth import ANY_REALM, AuthFileError, add_token, revoke_token

    if args.realm != ANY_REALM:
        try:
            check_name(args.realm, "realm", realm=True)
        except InvalidInput as exc:
            raise CommandError(f"--realm: {exc.detail}", 2) from None
    try:
        token, grant = add_token(args.auth, args.realm, args.permission)
    except AuthFileError as exc:
        raise CommandError(str(exc)) from None
    try:
        print(token, flush=True)  # the first line, alone: scripts read it with `head -1`
    except OSError as exc:  # (a full disk, a closed pipe) a token nobody saw must not stay valid
        why = exc.strerror or exc
        try:
            revoke_token(args.auth, grant.id)
        except (OSError, AuthFileError) as undo:  # (the token file on that full disk too)
            raise CommandError(f"could not write the new token ({why}), nor take it out of {args.auth} "
                               f"({getattr(undo, 'strerror', None) or undo}): revoke id {grant.id} with "
                               "`perhap token revoke` once there is room") from None
        raise CommandError(f"could not write the new token ({why}): it was not added") from None
    print(f"id {grant.id}: {grant.permission} on realm {grant.realm!r}; store it now, it is not shown again",
          file=sys.stderr)
    return 0


def run_token_list(args: argparse.Namespace) -> int:
    """List the tokens' ids, realms, permissions and creation times (never the tokens)."""
    from ..auth import AuthFileError, load_grants

    try:
        grants = load_grants(args.auth)
    except AuthFileError as exc:
        raise CommandError(str(exc)) from None
    for g in grants:
        print(f"{g.id}\t{g.realm}\t{g.permission}\t{g.created}")
    return 0


def run_token_revoke(args: argparse.Namespace) -> int:
    """Revoke a token by its id or by the token itself."""
    from ..auth import AuthFileError, revoke_token

    try:
        grant = revoke_token(args.auth, args.which)
    except AuthFileError as exc:
        raise CommandError(str(exc)) from None
    print(f"revoked {grant.id} ({grant.permission} on realm {grant.realm!r})")
    return 0
