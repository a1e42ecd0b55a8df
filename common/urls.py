"""URLs that may carry credentials: detect them, and show them without.

A credential is the user name and password (``https://user:password@host/…``), or the value of a query or
fragment parameter named like one (``…?token=…``, ``&api_key=…``, ``&X-Amz-Signature=…``, ``#access_token=…``).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import socket
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit, urlunsplit

import httpx

# The words of a name (a query parameter's, a log field's: split at "_", "-", ".", and "aB" as in accessToken) that
# make its value a credential wherever they stand; and a word ending in one of _SECRET_ENDINGS does too (accesstoken,
# clientsecret, jsessionid).
_SECRET_WORDS = frozenset(
    {"token", "secret", "password", "passwd", "passphrase", "apikey", "accesskey", "secretkey", "privatekey",
     "authorization", "credential", "credentials"}
)
_SECRET_ENDINGS = ("token", "secret", "password", "passwd", "passphrase", "sessionid", "sessid")
# Words that do only as the last word, an "id" or a number after them aside: db_pass, api_key, ?sig=, session_id and
# X-Amz-Signature are credentials; auth_mode, key_frame, pass_count and signature_version are not (before, anywhere in
# a name, ?auth_mode=basic in a deployment's [env] was refused as a URL with credentials).
_SECRET_LAST_WORDS = frozenset({"pass", "pw", "pwd", "key", "auth", "session", "sig", "signature", "bearer", "jwt"})


def name_words(name: str) -> list[str]:
    """The words of ``name``, in lower case: split at "_", "-", ".", and "aB" as in accessToken."""
    return [word for word in re.split(r"[_.\-]", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()) if word]


def is_secret_parameter(name: str) -> bool:
    return names_a_credential(name_words(name))


def names_a_credential(words: list[str]) -> bool:
    last = next((word for word in reversed(words) if word != "id" and not word.isdigit()), "")
    return last in _SECRET_LAST_WORDS or any(word in _SECRET_WORDS or word.endswith(_SECRET_ENDINGS) for word in words)


# RFC 3986's appendix B: the parts of any URL, checking nothing (urlsplit refuses an unclosed "[" in the host).
_URL_PARTS = re.compile(r"(?:([^:/?#]+):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?", re.DOTALL)


def _split(url: str) -> SplitResult:
    """urlsplit's parts of ``url``; of one it cannot parse, the parts as written: such a URL may still carry a
    password or a token, which must be found and hidden all the same (it went into a deployment's plain env)."""
    try:
        return urlsplit(url)
    except ValueError:
        match = _URL_PARTS.fullmatch(url)
        assert match is not None, "every part is optional: any text matches"
        return SplitResult(*(part or "" for part in match.groups()))


def url_credentials(url: str) -> list[str]:
    """The user name, password and secret query and fragment values in `url`, those present (for
    common.logs.register_secret)."""
    parts = _split(url)
    query = parse_qsl(parts.query) + parse_qsl(parts.fragment)
    values = [parts.username, parts.password, *(value for name, value in query if is_secret_parameter(name))]
    return [value for value in values if value]


def url_secrets(url: str) -> list[str]:
    """What of ``url`` no output may show (for common.logs.register_secret): its password and secret query values,
    its user name when it has no password (``https://<token>@host``), and the ``Authorization: Basic`` value a
    client sends for them, which a peer's error page may echo (base64: read back by anyone). A user name beside a
    password says who, and masked in every line, ``worker`` garbled every name holding it
    (``comfyui-***-serverless``)."""
    credentials = url_credentials(url)
    parts = _split(url)
    if parts.password and parts.username:
        credentials.remove(parts.username)
    if parts.username or parts.password:  # as httpx encodes them: the URL's user and password, unquoted, in UTF-8
        userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        credentials.append(base64.b64encode(userinfo.encode()).decode())
    return credentials


# A path or query shorter than this is no secret worth a mask: masked in every line, "/hook" would garble them.
MIN_SECRET_PATH_CHARS = 8


def secret_url_secrets(url: str) -> list[str]:
    """What no output may show of a URL that is itself the credential (a Slack or Discord webhook: its path holds
    the token): the URL, and its path and query alone, which a server refusing the request names
    ("Cannot POST /services/T…/B…/<token>")."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    return [url, *(part for part in {parts.path, tail} if len(part) >= MIN_SECRET_PATH_CHARS), *url_credentials(url)]


def queue_token_clash(queue_url: str) -> str | None:
    """Why QUEUE_MANAGER_URL cannot go with QUEUE_MANAGER_TOKEN, or None (for a check made when both are set):
    both need the one Authorization header, and httpx sends the URL's user and password (Basic) in place of the
    token, so the queue manager refused every request and the token was blamed."""
    try:
        parts = urlsplit(queue_url)
    except ValueError:
        return None
    if not (parts.username or parts.password):
        return None
    return (
        "QUEUE_MANAGER_URL carries a user name or password and QUEUE_MANAGER_TOKEN is set: both go in the one "
        "Authorization header and the URL's would replace the token (every request refused with 401). Keep one: "
        "QUEUE_MANAGER_TOKEN for this project's queue manager, or the URL's credentials for a proxy that asks for them"
    )


# A queue manager with a worker token answers a worker route 403 for the participants' token (401 for any other).
PARTICIPANTS_ON_WORKER_ROUTE = (
    "QUEUE_MANAGER_TOKEN is the participants' token: worker routes take only the queue manager's worker token (its "
    "QUEUE_MANAGER_WORKER_TOKEN); give the worker that one as its QUEUE_MANAGER_TOKEN"
)


def queue_refusal_cause(status: int, has_token: bool, *, worker_route: bool = False) -> str | None:
    """The setting behind a queue manager's refusal (401/403: the token; 404: the URL), as the worker's polls
    (``worker_route``: /api/workers/) and the scaler's reads name it; None for other answers."""
    if status == 403 and has_token and worker_route:
        return PARTICIPANTS_ON_WORKER_ROUTE
    if status in (401, 403):
        return f"QUEUE_MANAGER_TOKEN is {'wrong' if has_token else 'unset'}"
    if status == 404:  # a URL with /api already in it, a path, the port of another server
        return ("QUEUE_MANAGER_URL must be the queue manager's base URL, the part before /api/ "
                "(e.g. http://127.0.0.1:8080), and point at a queue manager")
    return None


def host_port(host: str, port: int) -> str:
    """``host:port`` as a URL writes it: an IPv6 address in brackets (``[::1]:8080``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url_has_credentials(url: str) -> bool:
    return bool(url_credentials(url))


def redact_url(url: str) -> str:
    """`url` with its user name, password and secret query and fragment values replaced by ***, for output,
    status pages and logs; those of a URL nested in its query too (https://proxy/?url=https%3A%2F%2F…)."""
    if url_has_credentials(url):
        parts = _split(url)
        netloc = parts.netloc
        if parts.username or parts.password:
            netloc = f"***@{netloc.rpartition('@')[2]}"
        query, fragment = ("&".join(_redact_parameter(pair) for pair in part.split("&"))
                           for part in (parts.query, parts.fragment))
        url = urlunsplit(parts._replace(netloc=netloc, query=query, fragment=fragment))
    return redact_urls_in(url)


# A URL nested in another's query (a proxy's ?url=…, a download error quoting a presigned link) has its "://",
# "@", "?", "&", "#" and "=" percent-encoded: %3A%2F%2F, %40, %3F, %26, %23, %3D; once more per level of nesting,
# each "%" as %25 (%253F, %25253F, ...). These match any level at once: nothing recurses, however deep.
def _encoded(*codes: str) -> str:
    return rf"%(?:25)*+(?i:{'|'.join(codes)})"


def _any_but_encoded(*codes: str) -> str:
    return rf"%(?!(?:25)*+(?i:{'|'.join(codes)}))"


# Credentials inside any URL in free text (an error message, a traceback): scheme://user:password@host ->
# scheme://***@host, as redact_url shows a single URL: up to the last "@" before the path, as clients read it (a
# password with an unencoded "@" kept its tail). Tried once per run of scheme characters, from its start
# (`...https://` too): tried from every letter of a run, a megabyte of letters (a peer's error page) took minutes.
_URL_CREDENTIALS = re.compile(
    rf"(?<![a-zA-Z0-9+.-])(?P<scheme>[0-9+.-]*[a-zA-Z][a-zA-Z0-9+.-]*+(?:(?P<plain>://)|{_encoded('3A')}"
    rf"(?:/|{_encoded('2F')}){{2}}))"  # "/" as is too: Python's quote() keeps it (https%3A//user%3Apass%40host)
    rf"(?(plain)[^/\s?#]+@|(?:[^/\s?#%]++|{_any_but_encoded('2F', '3F', '23')})+(?P<at>{_encoded('40')}))"
)
# ... and the values of query and fragment parameters named like credentials (?token=..., &api_key=...,
# #access_token=... as OAuth's implicit flow sends it), and of path parameters (/app;jsessionid=...). A value is
# skipped only when masked: a URL nested in another parameter's value is searched too.
_PARAMETER = re.compile(
    # "[?&#;]" or _encoded("3F", "26", "23", "3B"), in a form a search skips the other characters three times faster in
    rf"(?P<lead>[?&#;%](?:(?<=%)(?:25)*+(?i:3F|26|23|3B)|(?<!%)))"
    rf"(?P<name>(?:[A-Za-z0-9_.-]|{_any_but_encoded('3F', '26', '23', '3B', '3D')})++)(?:=|{_encoded('3D')})"
)
_VALUE = re.compile(r"[^&#\s\"'<>]+")
_ENCODED_VALUE = re.compile(rf"(?:[^&#\s\"'<>%]++|{_any_but_encoded('26', '23')})+")
_ESCAPE = re.compile(r"%(?:25)*([0-9A-Fa-f]{2})")


def redact_urls_in(text: str) -> str:
    """`text` with the user name, password and secret query and fragment values of every URL in it masked,
    those of URLs nested percent-encoded in another's query however many times (for common.logs.scrub)."""
    text = _URL_CREDENTIALS.sub(lambda found: f"{found['scheme']}***{found['at'] or '@'}", text)
    pieces, kept, at = [], 0, 0
    while found := _PARAMETER.search(text, at):
        at = found.end()
        if not is_secret_parameter(_ESCAPE.sub(lambda escape: chr(int(escape[1], 16)), found["name"])):
            continue  # its value unread: one with no end (?a=b?a=b…) was read again from each name in it
        if value := (_VALUE if found["lead"] in "?&#;" else _ENCODED_VALUE).match(text, at):
            pieces += [text[kept:at], "***"]
            kept = at = value.end()
    return "".join(pieces) + text[kept:]


def _redact_parameter(pair: str) -> str:
    name, has_value, value = pair.partition("=")
    return f"{name}=***" if has_value and value and is_secret_parameter(unquote(name)) else pair


IN_CLEAR = (
    "must be an https:// URL (http:// only to this machine: localhost, a loopback address, 0.0.0.0 or ::): the "
    "credentials travel with every request"
)


def encrypted_or_local(url: str) -> bool:
    """Whether credentials sent to ``url`` travel encrypted: https, or plain http to this machine only (a stand-in
    on loopback: names_this_machine)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return False
    if parts.scheme == "https" and host:
        return True
    return parts.scheme == "http" and names_this_machine(url)


def credentials_in_clear(url: str, token: bool) -> bool:
    """Whether a client sending a token (or the URL's own password) to ``url`` would send it unencrypted."""
    return bool(url) and (token or url_has_credentials(url)) and not encrypted_or_local(url)


def names_this_machine(url: str) -> bool:
    """Whether a connection to ``url`` stays on this machine: localhost, a loopback address, or 0.0.0.0 / ::
    (bracketed, IPv4-mapped or in inet_aton's shorthand too: 127.1, 0), which a connection reaches as the loopback.
    So a proxy is skipped for them, plain http may carry a credential there, and a replica given one reaches itself,
    never a queue manager."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return host == "localhost" or _is_local_address(host)


def direct_transport(url: str) -> httpx.AsyncHTTPTransport | None:
    """The transport of an httpx client for a peer at ``url``: None (httpx's own: HTTP_PROXY, HTTPS_PROXY and
    ALL_PROXY apply, NO_PROXY excepts) unless the peer is on this machine, which is reached directly. A proxy's
    127.0.0.1 is not ours: a loopback queue manager's token, and every workflow sent to a loopback ComfyUI, went in
    clear to a proxy set for the machine. CA certificates (SSL_CERT_FILE) still apply."""
    return httpx.AsyncHTTPTransport() if names_this_machine(url) else None


# The numeric forms inet_aton reads as an IPv4 address besides the dotted quad (127.1, 0, 0x7f.1, 2130706433), which
# a client's resolver (getaddrinfo) reads alike, without a lookup: httpx connected to http://127.1 on the loopback.
_IPV4_SHORTHAND = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}", re.IGNORECASE)


def _ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` is, as a client's resolver reads it; None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        if not _IPV4_SHORTHAND.fullmatch(host):
            return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:  # a part too large: 256.1, 0x100000000
        return None


def _is_local_address(host: str) -> bool:
    address = _ip_address(host)
    if address is None:
        return False
    address = getattr(address, "ipv4_mapped", None) or address  # ::ffff:127.0.0.1 is 127.0.0.1 (Python < 3.13: not)
    return address.is_loopback or address.is_unspecified
