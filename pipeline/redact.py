"""Credentials out of anything written down: a tracking URI's user:password@ and secret query values masked."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameters that carry secrets in tracking URIs (signed URLs, API tokens, database passwords).
SECRET_PARAMS = re.compile(r"token|secret|password|passwd|pwd|key|signature|sig|auth|credential", re.IGNORECASE)


def mask_uri(uri: str | None) -> str | None:
    """`uri` with its password (or a lone user token) and secret query values replaced by ***.

    http://user:pass@host/x?token=t&a=1 -> http://user:***@host/x?token=***&a=1. Anything that is
    not a URL with a scheme and a host part (a path, sqlite:///file) is returned as it is.
    """
    if not uri or "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return re.sub(r"//[^/@]*@", f"//{MASK}@", uri)  # unparsable: drop whatever precedes an @
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if sep else f"{MASK}@{host}"  # a lone user part is often a token
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if SECRET_PARAMS.search(k) else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # nothing to mask: as given (urlunsplit would rewrite sqlite:////abs to sqlite://abs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
