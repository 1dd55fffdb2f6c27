"""A real ComfyUI server (main.py --cpu) on 127.0.0.1 with this pack installed, for tests.

The base directory is a temp folder: custom_nodes/ holds the pack (a symlink to this checkout, as a user's git
clone would sit there) and the test helper nodes; models/ holds the tiny generated files.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

from helpers import REPO

PACK = "ComfyUI-SkyReels-FP8"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, host, base):
        self.host, self.base = host, base
        for sub in ("custom_nodes", "models/diffusion_models", "models/loras", "input", "output", "user"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        os.symlink(REPO, os.path.join(base, "custom_nodes", PACK))
        shutil.copytree(os.path.join(os.path.dirname(__file__), "helper_nodes"),
                        os.path.join(base, "custom_nodes", "skyreels_test_helpers"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(base, "server.log")
        self.proc = None

    def start(self, timeout=180):
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", self.base, "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.host, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start-up:\n{self.read_log()[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer in {timeout} s:\n{self.read_log()[-4000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc:
            self.log.close()

    def read_log(self):
        with open(self.log_path) as f:
            return f.read()

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path, data):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run(self, prompt, timeout=600):
        """Queue an API-format prompt and wait for it. Returns the history entry (status, outputs, messages)."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "tests", "prompt_id": str(uuid.uuid4())})
        if status != 200:
            raise AssertionError(f"prompt refused ({status}): {json.dumps(body)[:3000]}")
        pid = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist:
                return hist[pid]
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.read_log()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout} s")


def error_of(entry):
    """The execution_error message of a finished prompt, or None if it succeeded."""
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return data
    return None
