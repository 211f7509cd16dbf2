"""The pages emails link to.

A GET never changes anything (mail scanners prefetch links): the verification page asks the person to press
a button, which POSTs the token; the invitation page explains how to accept once logged in.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Confirm your email · ProgNetwork</title>
<meta name="referrer" content="no-referrer"></head>
<body style="font-family: sans-serif; max-width: 32rem; margin: 4rem auto">
<h1>Confirm your email address</h1>
<p><button id="confirm">Confirm my email address</button></p>
<p id="result" role="status"></p>
<script>
const token = new URLSearchParams(location.search).get("token") || "";
document.getElementById("confirm").onclick = async () => {
  const out = document.getElementById("result");
  const r = await fetch("/v1/auth/verify", {method: "POST", headers: {"Content-Type": "application/json"},
                                            body: JSON.stringify({token})});
  const body = await r.json();
  out.textContent = r.ok ? "Your email address is confirmed. You can log in now."
                         : (body.detail || body.title || "Verification failed.");
};
</script>
</body></html>
"""


@router.get("/verify-email", response_class=HTMLResponse)
async def verify_email_page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


INVITATION_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Invitation · ProgNetwork</title>
<meta name="referrer" content="no-referrer"></head>
<body style="font-family: sans-serif; max-width: 40rem; margin: 4rem auto">
<h1>You are invited to an organisation</h1>
<p>Log in with the email address this invitation was sent to, then accept it with your access token:</p>
<pre id="cmd" style="white-space: pre-wrap; background: #f4f4f4; padding: 1rem"></pre>
<script>
const token = new URLSearchParams(location.search).get("token") || "";
document.getElementById("cmd").textContent = [
  "curl -X POST " + location.origin + "/v1/invitations/accept",
  "  -H 'Authorization: Bearer $ACCESS' -H 'Content-Type: application/json'",
  "  -d '" + JSON.stringify({token}) + "'"].join(" \\\\\\n");
</script>
</body></html>
"""


@router.get("/accept-invitation", response_class=HTMLResponse)
async def accept_invitation_page() -> HTMLResponse:
    return HTMLResponse(INVITATION_PAGE, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
