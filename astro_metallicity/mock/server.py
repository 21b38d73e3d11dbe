"""A local HTTP server speaking the SDSS protocols, and the `MockSDSS` context manager.

Endpoints (``{N}`` is any data release number):

* ``/dr{N}/en/tools/search/x_results.aspx`` -- SkyServer SQL search (``cmd``,
  ``format=csv|json``) and, with ``uquery`` and an uploaded position list, the
  CrossID service (``X_Results.aspx``; IIS paths are case-insensitive);
* ``/sas/dr{N}/eboss/photoObj/frames/301/{run}/{camcol}/frame-{band}-{run:06d}-{camcol}-{field:04d}.fits.bz2``
  -- corrected frames;
* ``/dr{N}/SkyServerWS/ImgCutout/getjpeg?ra=&dec=&scale=&width=&height=`` --
  ImgCutout *gri* JPEGs.
"""

import hashlib
import json
import re
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..logger import log
from .sky import MockSky
from ._sql import SkyServerError, error_csv, execute_sql, table_to_csv

__all__ = ["Faults", "MockSDSS", "serve"]

_SQL_RE = re.compile(r"^/dr(\d+)/en/tools/(?:search/x_results\.aspx|search/x_sql\.aspx|"
                     r"search/x_sql\.asp|crossid/x_crossid\.aspx?)$", re.IGNORECASE)
_FRAME_RE = re.compile(r"^/sas/dr(\d+)/(?:eboss|boss|prior-surveys/sdss4-dr17-eboss)/photoObj/frames/"
                       r"(\d+)/(\d+)/(\d)/frame-([ugriz])-(\d{6})-(\d)-(\d{4})\.fits\.bz2$")
_JPEG_RE = re.compile(r"^/dr(\d+)/SkyServerWS/ImgCutout/getjpeg$", re.IGNORECASE)
_PREFIX_RE = re.compile(r"^/mock-[0-9a-f]+(?=/)")
_CSV = "text/plain; charset=utf-8"


def _error_response(message):
    """SkyServer answers a failed query with HTTP 200 and an ``error_message`` table."""
    return 200, error_csv(message).encode(), _CSV


@dataclass
class Faults:
    """Fault injection for the mock server, deterministic by ``seed``.

    Whether a request fails is decided from ``seed``, the request path and
    query and how many times that same URL was requested before, so a given
    sequence of requests always meets the same faults, even with concurrency.

    Parameters
    ----------
    latency : float
        Seconds added before every response.
    error_rate : float
        Fraction of requests answered with HTTP 500 or 503.
    drop_rate : float
        Fraction of requests whose connection is closed without a response.
    truncate_rate : float
        Fraction of requests whose body is cut to half its announced length.
    fail_first : int
        The first ``fail_first`` requests of every URL are answered with 503.
    match : str
        Regular expression; faults apply only to paths it matches (default all).
    seed : int
        Seed of the fault decisions.
    """

    latency: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    truncate_rate: float = 0.0
    fail_first: int = 0
    match: str = ""
    seed: int = 0

    def __post_init__(self):
        for name in ("error_rate", "drop_rate", "truncate_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                msg = f"Faults.{name} must be a fraction between 0 and 1, got {value!r}"
                raise ValueError(msg)
        if self.error_rate + self.drop_rate + self.truncate_rate > 1.0:
            msg = "Faults: error_rate + drop_rate + truncate_rate must not exceed 1"
            raise ValueError(msg)
        if self.latency < 0 or self.fail_first < 0:
            msg = "Faults.latency and Faults.fail_first must not be negative"
            raise ValueError(msg)

    def decide(self, url, attempt):
        """Fault for the ``attempt``-th (0-based) request of ``url``.

        Parameters
        ----------
        url : str
            Request path with query.
        attempt : int
            How many times this URL was requested before.

        Returns
        -------
        fault : str or None
            ``'error500'``, ``'error503'``, ``'drop'``, ``'truncate'`` or `None`.
        """
        if self.match and not re.search(self.match, url):
            return None
        if attempt < self.fail_first:
            return "error503"
        digest = hashlib.sha256(f"{self.seed}|{url}|{attempt}".encode()).digest()
        u = int.from_bytes(digest[:8], "little") / 2 ** 64
        if u < self.error_rate:
            return "error500" if digest[8] % 2 == 0 else "error503"
        u -= self.error_rate
        if u < self.drop_rate:
            return "drop"
        u -= self.drop_rate
        if u < self.truncate_rate:
            return "truncate"
        return None


def _as_faults(faults):
    if faults is None or isinstance(faults, Faults):
        return faults
    if isinstance(faults, dict):
        return Faults(**faults)
    msg = f"faults must be a Faults instance, a dict of its fields or None, got {type(faults).__name__}"
    raise TypeError(msg)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # clients that time out or hang up are normal with fault injection; no tracebacks
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug(f"mock SDSS: client {client_address} went away ({exc!r})")
        else:
            log.warning(f"mock SDSS: error serving {client_address}: {exc!r}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MockSkyServer/1.0"
    disable_nagle_algorithm = True  # keep-alive + small writes would stall on delayed ACKs

    def log_message(self, format, *args):
        log.debug("mock SDSS: " + format % args)

    def do_GET(self):
        self._dispatch("GET", b"")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self._dispatch("POST", body)

    def _dispatch(self, method, body):
        srv = self.server.mock
        split = urlsplit(self.path)
        path = _PREFIX_RE.sub("", split.path)
        logged = path + (f"?{split.query}" if split.query else "")
        fault = srv.record(method, logged)
        if srv.faults is not None and srv.faults.latency:
            time.sleep(srv.faults.latency)
        if fault == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            return
        if fault in ("error500", "error503"):
            code = 500 if fault == "error500" else 503
            self._send(code, b"Simulated server error\n", "text/plain")
            return
        try:
            params = self._params(split.query, body)
            status, payload, ctype = self._route(path, params)
        except Exception as exc:  # noqa: BLE001 - a mock must answer, never die
            log.warning(f"mock SDSS: error answering {self.path}: {exc!r}")
            status, payload, ctype = 500, f"Internal error: {exc}\n".encode(), "text/plain"
        self._send(status, payload, ctype, truncate=(fault == "truncate"))

    def _send(self, status, payload, ctype, truncate=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        if truncate:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload[:len(payload) // 2] if truncate else payload)
        if truncate:
            self.wfile.flush()
            try:
                self.connection.shutdown(2)
            except OSError:
                pass

    def _params(self, query, body):
        params = {k.lower(): v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        ctype = self.headers.get("Content-Type", "")
        if body and ctype.startswith("multipart/form-data"):
            msg = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if name is not None:
                    params[name.lower()] = part.get_payload(decode=True).decode("utf-8", "replace")
        elif body:
            params.update({k.lower(): v[0] for k, v in
                           parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()})
        return params

    def _route(self, path, params):
        srv = self.server.mock
        if _SQL_RE.match(path):
            if "uquery" in params:
                return srv._crossid(params)
            return srv._sql(params)
        m = _FRAME_RE.match(path)
        if m:
            _, _rerun, run, camcol, band, run6, camcol2, field = m.groups()
            if int(run) != int(run6) or camcol != camcol2:
                return 404, b"Not Found\n", "text/plain"
            try:
                data = srv.sky.frame_file(int(run), int(camcol), int(field), band)
            except KeyError:
                return 404, b"Not Found\n", "text/plain"
            return 200, data, "application/x-bzip2"
        if _JPEG_RE.match(path):
            return srv._jpeg(params)
        return 404, b"Not Found\n", "text/plain"


class _MockSDSSServer:
    """The HTTP server of a mock sky (runs in a background thread).

    Parameters
    ----------
    sky : `~astro_metallicity.mock.MockSky`
        The sky to serve.
    port : int, optional
        Port on 127.0.0.1; 0 picks a free one.
    faults : `Faults` or dict, optional
        Fault injection.
    """

    def __init__(self, sky, *, port=0, faults=None, host="127.0.0.1"):
        self.sky = sky
        self.faults = _as_faults(faults)
        self.requests = []
        self._attempts = {}
        self._lock = threading.Lock()
        self.httpd = _HTTPServer((host, port), _Handler)
        self.httpd.mock = self
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread = None

    def record(self, method, path):
        """Log a request and return the fault to inject (if any).

        Parameters
        ----------
        method : str
            HTTP method.
        path : str
            Request path with query (without the sky's URL prefix).

        Returns
        -------
        fault : str or None
            See `Faults.decide`.
        """
        with self._lock:
            self.requests.append((method, path))
            attempt = self._attempts.get(path, 0)
            self._attempts[path] = attempt + 1
        return self.faults.decide(path, attempt) if self.faults is not None else None

    def start(self):
        """Serve in a daemon thread.

        Returns
        -------
        self : `_MockSDSSServer`
        """
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="mock-sdss", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ---------------------------------------------------------------- services
    def _sql(self, params):
        try:
            names, columns = execute_sql(self.sky, params.get("cmd", ""))
        except SkyServerError as exc:
            return _error_response(exc)
        if params.get("format", "csv").lower() == "json":
            rows = [dict(zip(names, (v.item() if hasattr(v, "item") else v for v in row)))
                    for row in zip(*columns)] if columns else []
            return 200, json.dumps([{"TableName": "Table1", "Rows": rows}]).encode(), "application/json"
        return 200, table_to_csv(names, columns).encode(), _CSV

    def _crossid(self, params):
        """The CrossID service: match the uploaded positions, then run ``uquery`` on them.

        As on SkyServer, ``uquery`` reads the upload as ``#upload`` (``up_id``,
        ``up_name``, ``up_ra``, ``up_dec``) and the matches as ``#x`` (``up_id``,
        ``objID``, ``distance`` in arcmin).
        """
        try:
            radius = float(params.get("radius", 0.5))  # arcmin
            if radius > 3.0:
                msg = "radius must be at most 3 arcmin"
                raise SkyServerError(msg)
            lines = [ln.split() for ln in params.get("upload", "").strip().splitlines() if ln.strip()]
            if not lines:
                msg = "empty upload list"
                raise SkyServerError(msg)
            header = [h.lower() for h in lines[0]]
            if "ra" not in header or "dec" not in header:
                msg = "upload list needs ra and dec columns"
                raise SkyServerError(msg)
            ira, idec = header.index("ra"), header.index("dec")
            iname = header.index("name") if "name" in header else None
            rows = lines[1:]
            ra = np.array([float(r[ira]) for r in rows])
            dec = np.array([float(r[idec]) for r in rows])
            up_names = np.array([r[iname] if iname is not None else str(j) for j, r in enumerate(rows)],
                                dtype=object)
            nearest = params.get("photoscope", "nearPrim").lower() != "allobj"
            up, cat_rows, dist = self.sky.match(ra, dec, radius * 60.0, nearest=nearest)
        except SkyServerError as exc:
            return _error_response(exc)
        except (ValueError, IndexError) as exc:
            return _error_response(f"bad upload ({exc})")
        objid = self.sky.sql_columns()["objid"][cat_rows]
        temp_tables = {"#upload": {"up_id": np.arange(1, len(ra) + 1), "up_name": up_names,
                                   "up_ra": ra, "up_dec": dec},
                       "#x": {"up_id": up + 1, "objID": objid, "distance": dist}}
        try:
            names, columns = execute_sql(self.sky, params.get("uquery", ""), temp_tables=temp_tables)
        except SkyServerError as exc:
            return _error_response(exc)
        lower = [n.lower() for n in names]
        # CrossID's nearest-object answer leads with the uploaded name and the objID of
        # the match (one row per matched position, in upload order).
        if nearest and columns and len(columns[0]) == len(up):
            if "objid" not in lower:
                names.insert(0, "objID")
                columns.insert(0, objid)
            if iname is not None and "name" not in lower:
                names.insert(0, "name")
                columns.insert(0, up_names[up])
        return 200, table_to_csv(names, columns).encode(), _CSV

    def _jpeg(self, params):
        try:
            ra = float(params["ra"])
            dec = float(params["dec"])
            scale = float(params.get("scale", 0.396))
            width = int(float(params.get("width", 128)))
            height = int(float(params.get("height", 128)))
            data = self.sky.cutout_jpeg(ra, dec, scale, width, height)
        except (KeyError, ValueError) as exc:
            return 400, f"ImgCutout: bad request ({exc})\n".encode(), "text/plain"
        return 200, data, "image/jpeg"


class MockSDSS:
    """A simulated SDSS served on 127.0.0.1 for the duration of a ``with`` block.

    On entry the server starts on a free port and ``astroquery.sdss.conf`` and
    ``astro_metallicity.conf`` (``skyserver_baseurl`` and ``sas_baseurl``) point
    at it; on exit they are restored and the server stops. URLs carry a prefix
    unique to the sky's parameters so that HTTP caches never mix two skies.

    Parameters
    ----------
    n_galaxies : int, optional
        Number of simulated galaxies.
    seed : int, optional
        Seed of the simulation.
    faults : `Faults` or dict, optional
        Fault injection.
    port : int, optional
        Port; 0 (default) picks a free one.
    sky : `~astro_metallicity.mock.MockSky`, optional
        Serve this sky instead of simulating one.
    appearance : {"classic", "sdss"}, optional
        Appearance preset of the simulated sky (see `~astro_metallicity.mock.MockSky`);
        default ``"classic"``, ignored if ``sky`` is given.
    **sky_kwargs
        Passed to `~astro_metallicity.mock.MockSky`.

    Examples
    --------
    >>> from astro_metallicity.mock import MockSDSS
    >>> with MockSDSS(n_galaxies=50, seed=1) as sdss:  # doctest: +SKIP
    ...     print(len(sdss.catalog))
    50
    """

    def __init__(self, n_galaxies=200, seed=0, *, faults=None, port=0, sky=None, appearance=None,
                 **sky_kwargs):
        self.sky = sky if sky is not None else MockSky(n_galaxies, seed, appearance=appearance, **sky_kwargs)
        self.faults = _as_faults(faults)
        self.port_requested = port
        self.server = None
        self._stack = None
        # The URL prefix identifies the sky's content, so caches keyed by URL (astroquery's,
        # astropy's, this package's) never serve one sky's answers for another.
        digest = hashlib.sha1()
        cat = self.sky.catalog
        for name in ("objid", "ra", "dec", "oh_p50", "modelMag_r", "petroR90_r"):
            digest.update(np.ascontiguousarray(getattr(cat[name], "value", cat[name])).tobytes())
        digest.update(json.dumps([self.sky.seed, self.sky.noise, len(self.sky.stars["ra"]),
                                  asdict(self.faults) if self.faults else None,
                                  time.time_ns() if self.faults else 0], default=str).encode())
        if self.sky.appearance != "classic":
            digest.update(self.sky.appearance.encode())
        if self.sky.sky_frames is not None:
            digest.update(self.sky.sky_frames.digest.encode())
        self.token = digest.hexdigest()[:12]

    @property
    def catalog(self):
        """The truth catalogue (`~astropy.table.QTable`)."""
        return self.sky.catalog

    @property
    def requests(self):
        """Requests served so far: list of ``(method, path)``, path with query."""
        return self.server.requests if self.server is not None else []

    @property
    def url(self):
        """Base URL of the mock SkyServer (the SAS is at ``url + '/sas'``)."""
        return f"http://127.0.0.1:{self.server.port}/mock-{self.token}"

    def __enter__(self):
        from astroquery.sdss import conf as aq_conf

        from .. import conf

        self.server = _MockSDSSServer(self.sky, port=self.port_requested, faults=self.faults).start()
        stack = ExitStack()
        try:
            for c in (aq_conf, conf):
                stack.enter_context(c.set_temp("skyserver_baseurl", self.url))
                stack.enter_context(c.set_temp("sas_baseurl", self.url + "/sas"))
        except Exception:
            stack.close()
            self.server.stop()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc):
        try:
            if self._stack is not None:
                self._stack.close()
        finally:
            self._stack = None
            self.server.stop()
        return False


def serve(port=8080, n_galaxies=1000, seed=0, *, faults=None, host="127.0.0.1", appearance="classic"):
    """Serve a mock SDSS until interrupted (Ctrl-C); used by ``astro-metallicity mock-sdss``.

    Parameters
    ----------
    port : int, optional
        Port to listen on (0 picks a free one).
    n_galaxies : int, optional
        Number of simulated galaxies.
    seed : int, optional
        Seed of the simulation.
    faults : `Faults` or dict, optional
        Faults to inject into the answers.
    host : str, optional
        Interface to bind (default 127.0.0.1 only).
    appearance : {"classic", "sdss"}, optional
        Appearance preset of the simulated sky (see `~astro_metallicity.mock.MockSky`).
    """
    sky = MockSky(n_galaxies, seed, appearance=appearance)
    server = _MockSDSSServer(sky, port=port, faults=faults, host=host)
    base = f"http://{host}:{server.port}"
    log.info(f"Mock SDSS with {len(sky.catalog)} galaxies in {len(sky.footprint)} fields at {base}")
    log.info(f"  astroquery.sdss.conf.skyserver_baseurl = {base}; sas_baseurl = {base}/sas")
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
