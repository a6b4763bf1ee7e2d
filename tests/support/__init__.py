"""What the tests share, by concern; a test imports the module it needs
(``from tests.support.servers import start_gunicorn``), so the tests may live in any folder.

The ground:
    ``env``           the repository's root, CI's skipping rule (:func:`env.missing`), free
                      ports, fresh secrets, a hermetic instance's settings, the real ``flask`` CLI
    ``apps``          the app in-process: its keys, and a registered client on the test client
                      (``ApiUser``, what the ``api`` fixture hands a test)

Servers and networks:
    ``servers``       linksvc (or any WSGI app) under gunicorn or granian; an instance prepared
                      through the real CLI; concurrent requests at a live server
    ``clock_wsgi``    ``app:app`` with a clock a test moves (``tests.support.clock_wsgi:app``)
    ``rotation_wsgi`` ``app:app`` naming the worker that answered each request
    ``live``          a live linksvc for the Python client's tests; the user's browser in requests
    ``proxy``         a TCP proxy that cuts answers and refuses connections on cue
    ``webhook_receiver`` a real receiver that verifies each delivery with ``standardwebhooks``
    ``browsers``      Debian's Chromium and the flags Playwright launches it with
    ``images``        podman as this machine allows it, and the images the image tests build

Databases:
    ``databases``     a fresh PostgreSQL database, the Redis URL, a dump of every row
    ``pg_cluster``    a throwaway PostgreSQL cluster a test may stop and start
    ``autofailover``  a pg_auto_failover formation (monitor, primary, standby)
    ``ledger_fill``   a PostgreSQL ledger filled fast with COPY (also ``bench.ledger_scale``)

Hostile tokens:
    ``forge``         tokens with arbitrary headers, claims and signatures
    ``hostile``       hostile variants of a real token, each with the reason it must fail with
    ``jwt_attacks``   the attack suite's builders (RFC 8725, jwt_tool), from what an attacker holds
"""
