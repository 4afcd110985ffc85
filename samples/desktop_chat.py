"""A desktop chat window over a local model: the answer streams in as it is written, a Stop button
ends it, and the status line shows TTFT and tok/s.

    python samples/desktop_chat.py --model out/smollm2-onnx-int4 [--system "Be brief."]

Tk, because it ships with Python: the sample needs nothing beyond edgekit. The window's thread never
calls the engine. A worker thread runs each reply and hands the pieces over a queue that the window
drains every 30 ms, so the window stays responsive while the model works; Stop cancels the stream
from the window's thread, which frees the engine at once. Conversations longer than the context
window drop their oldest turns (the system message stays).
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
import tkinter as tk
from tkinter import ttk

import edgekit

POLL_MS = 30


class ChatWindow:
    def __init__(self, root: tk.Tk, engine, system: str | None = None, max_tokens: int = 256) -> None:
        self.root, self.engine, self.max_tokens = root, engine, max_tokens
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.events: queue.Queue = queue.Queue()
        self.stream = None
        self.stop_asked = threading.Event()
        self.busy = False
        self.last = None  # the last reply's GenerationResult

        root.title(f"edgekit chat: {engine.path.name}")
        root.geometry("720x480")
        frame = ttk.Frame(root, padding=8)
        frame.pack(fill="both", expand=True)
        self.transcript = tk.Text(frame, wrap="word", state="disabled", height=20, font=("DejaVu Sans", 11))
        self.transcript.tag_configure("you", foreground="#1a4f8b", font=("DejaVu Sans", 11, "bold"))
        self.transcript.tag_configure("model", foreground="#222222")
        self.transcript.tag_configure("note", foreground="#888888", font=("DejaVu Sans", 9, "italic"))
        self.transcript.pack(fill="both", expand=True)
        row = ttk.Frame(frame)
        row.pack(fill="x", pady=(8, 0))
        self.entry = ttk.Entry(row)
        self.entry.pack(side="left", fill="x", expand=True)
        self.entry.bind("<Return>", lambda _e: self.send())
        self.send_button = ttk.Button(row, text="Send", command=self.send)
        self.send_button.pack(side="left", padx=(8, 0))
        self.stop_button = ttk.Button(row, text="Stop", command=self.stop, state="disabled")
        self.stop_button.pack(side="left", padx=(8, 0))
        self.status = ttk.Label(
            frame, text=f"{engine.manifest.get('format')} on {engine.device}: ready", foreground="#555555"
        )
        self.status.pack(fill="x", pady=(6, 0))
        self.entry.focus_set()
        root.after(POLL_MS, self._poll)

    # ---- the window's thread --------------------------------------------------------------
    def send(self) -> None:
        text = self.entry.get().strip()
        if not text or self.busy:
            return
        self.entry.delete(0, "end")
        self.messages.append({"role": "user", "content": text})
        self._write(f"You: {text}\n", "you")
        self._write("Model: ", "model")
        self.busy = True
        self.stop_asked.clear()
        self.send_button.configure(state="disabled")
        self.stop_button.configure(state="normal")
        self.status.configure(text="thinking ...")
        self.sent_at, self.first_at, self.pieces = time.perf_counter(), None, 0
        threading.Thread(target=self._work, args=(list(self.messages),), daemon=True).start()

    def stop(self) -> None:
        self.stop_asked.set()
        stream = self.stream
        if stream is not None:
            stream.cancel()  # frees the engine now; the worker's loop ends at the next piece

    def _poll(self) -> None:
        try:
            while True:
                kind, value = self.events.get_nowait()
                if kind == "piece":
                    self._write(value, "model")
                    self._live()
                elif kind == "done" and value is not None:
                    self._finished(value)
                elif kind == "done":  # stopped before the first token: nothing was said
                    self.messages.pop()
                    self._write(" [stopped]\n\n", "note")
                    self._idle("stopped")
                else:  # the question goes too, so that the next one follows a reply
                    self.messages.pop()
                    self._write(f"\n[error: {value}]\n\n", "note")
                    self._idle(f"error: {value}")
        except queue.Empty:
            pass
        finally:
            self.root.after(POLL_MS, self._poll)

    def _live(self) -> None:
        """The status while the answer streams: time to the first piece, then pieces per second."""
        now = time.perf_counter()
        self.pieces += 1
        if self.first_at is None:
            self.first_at = now
        rate = (self.pieces - 1) / (now - self.first_at) if now > self.first_at else 0.0
        self.status.configure(
            text=f"streaming: TTFT {1000 * (self.first_at - self.sent_at):.0f} ms, "
            f"{rate:.0f} tok/s, {self.pieces} pieces (Stop ends it)"
        )

    def _finished(self, result) -> None:
        self.last = result
        self.messages.append({"role": "assistant", "content": result.text})
        if result.dropped_messages:  # the context was full: those turns are gone for good
            lead = 1 if self.messages and self.messages[0]["role"] == "system" else 0
            del self.messages[lead : lead + result.dropped_messages]
        stopped = " [stopped]" if result.finish_reason == "cancelled" else ""
        self._write(f"{stopped}\n\n", "note")
        speed = f", {result.decode_tok_s:.0f} tok/s" if result.tokens_out > 1 else ""
        self._idle(
            f"TTFT {1000 * result.ttft_s:.0f} ms{speed}, {result.tokens_out} tokens, "
            f"{result.finish_reason}"
            + (f"; {result.dropped_messages} old messages dropped" if result.dropped_messages else "")
        )

    def _idle(self, status: str) -> None:
        self.busy, self.stream = False, None
        self.send_button.configure(state="normal")
        self.stop_button.configure(state="disabled")
        self.status.configure(text=status)

    def _write(self, text: str, tag: str) -> None:
        self.transcript.configure(state="normal")
        self.transcript.insert("end", text, tag)
        self.transcript.configure(state="disabled")
        self.transcript.see("end")

    # ---- the worker thread ----------------------------------------------------------------
    def _work(self, messages: list[dict[str, str]]) -> None:
        try:
            stream = self.engine.chat(
                messages,
                max_tokens=self.max_tokens,
                stream=True,
                truncate="oldest",
                **self.engine.generation_defaults(),
            )
            self.stream = stream
            if self.stop_asked.is_set():  # Stop came while the prompt was being prepared
                stream.cancel()
            for piece in stream:
                self.events.put(("piece", piece))
            self.events.put(("done", stream.result))
        except Exception as exc:  # noqa: BLE001 (shown in the window; the window goes on)
            self.events.put(("error", str(exc) if isinstance(exc, edgekit.EdgekitError)
                             else f"{type(exc).__name__}: {exc}"))


def main() -> int:
    ap = argparse.ArgumentParser(description="A desktop chat window over a local edgekit artifact.")
    ap.add_argument(
        "--model",
        default="out/smollm2-onnx-int4",
        help="artifact directory (default: what samples/quickstart.py converts)",
    )
    ap.add_argument("--system", default=None, help="a system message")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    try:
        engine = edgekit.load(args.model, device=args.device)
    except edgekit.EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with engine:
        root = tk.Tk()
        ChatWindow(root, engine, args.system, args.max_tokens)
        root.mainloop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
