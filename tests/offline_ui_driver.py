"""Run inside the offline namespace by test_offline.py: start `assistant ui` on loopback, load the
page, ask one question through the app's API, print the answer's HTML, stop the server."""

import subprocess
import sys
import time
import urllib.request

script, index_dir, port, question = sys.argv[1:5]
url = f"http://127.0.0.1:{port}/"
server = subprocess.Popen([script, "ui", "--index-dir", index_dir, "--port", port],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=sys.stderr)
try:
    deadline = time.monotonic() + 240
    while True:
        if server.poll() is not None:
            sys.exit(f"assistant ui exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as page:
                assert page.status == 200
                break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("assistant ui did not start")
            time.sleep(0.5)
    from gradio_client import Client

    history = Client(url, verbose=False).predict(question, [], "All documents", api_name="/ask")[0]
    print(history[-1]["content"][0]["text"])
finally:
    server.terminate()
    server.wait(timeout=30)
