import urllib.request


def test_testserver_greets(testserver):
    with urllib.request.urlopen(testserver.url + "/echo") as r:
        assert r.read() == b"Welcome to SockJS!\n"
