"""Every word the tray shows, in one place so that it can be translated later.

Plain strings are constants; strings with values are ``str.format`` templates whose
placeholders are named, so a translation may reorder them. Nothing here is computed from
the agent's data: ``ui.model`` and the windows fill the templates in. Text that comes from
the agent (reasons, rule messages, image names) is untrusted and is made printable and
capped by the caller, never by a template.
"""

from __future__ import annotations

from typing import Final

APP_NAME: Final = "Pullgate"
APP_DESCRIPTION: Final = "Pullgate tray: your organisation's container image policy"

# --- icon states, in words (tooltip and status page) -------------------------------------
STATE_OK: Final = "Protecting: image pulls are checked against {policy}"
STATE_MONITOR: Final = "Monitor mode: pulls are recorded, not blocked ({policy})"
STATE_ATTENTION: Final = "Needs attention: {problem}"
STATE_DOWN: Final = "Not protecting: the Pullgate agent is not running"
STATE_CONNECTING: Final = "Connecting to the Pullgate agent…"
TOOLTIP: Final = "Pullgate — {line}"
TOOLTIP_MORE: Final = "{line} (and {count} more)"

# --- problems (attention) ----------------------------------------------------------------
PROBLEM_POLICY_STALE: Final = "the policy is stale (past its expiry, within the grace period)"
PROBLEM_POLICY_EXPIRED: Final = "the policy has expired ({behavior} applies)"
PROBLEM_POLICY_FALLBACK: Final = "no organisation policy is verified yet: enforcing {enforcing}"
PROBLEM_REFRESH_DEAD: Final = "the policy refresh has stopped: {error}"
PROBLEM_SIGNED_OUT: Final = "you are not signed in, and your organisation requires it"
PROBLEM_SIGN_IN_EXPIRED: Final = "your sign-in has expired, and your organisation requires it"
PROBLEM_AUDIT: Final = "the audit log is failing: {error}"
PROBLEM_AUDIT_LOST: Final = "{count} audit record(s) were lost"
PROBLEM_DOCKER_NOT_SHIM: Final = "docker is not pointed at Pullgate: {detail}"
PROBLEM_CLOCK: Final = "this machine's clock is behind the policy's issue time"
PROBLEM_UNKNOWN: Final = "the agent's status could not be read: {error}"

# --- menu -----------------------------------------------------------------------------------
MENU_POLICY: Final = "Policy: {policy}"
MENU_POLICY_NONE: Final = "Policy: unknown"
MENU_SIGNED_IN: Final = "Signed in as {who}"
MENU_SIGNED_OUT: Final = "Not signed in"
MENU_SIGN_IN_UNCONFIGURED: Final = "Sign-in not configured"
MENU_AGENT_DOWN: Final = {  # the cause (ui.stream.unreachable); the full error is its tooltip
    "missing": "Agent not running (control socket missing) — retrying…",
    "refused": "Agent not running (control socket refuses connections) — retrying…",
    "denied": "Agent out of reach (no permission on its control socket) — retrying…",
    "timeout": "Agent not answering — retrying…",
    "other": "Agent connection lost — retrying…",
}
MENU_STREAM_PROBLEM: Final = "Events: {problem}"
MENU_WHY: Final = "Why was the last pull blocked?"
MENU_DECISIONS: Final = "Recent decisions…"
MENU_STATUS: Final = "Status…"
MENU_SIGN_IN: Final = "Sign in…"
MENU_SIGN_OUT: Final = "Sign out"
MENU_REFRESH: Final = "Refresh policy"
MENU_DIAGNOSTICS: Final = "Run diagnostics…"
MENU_AUDIT_FOLDER: Final = "Open audit log folder"
MENU_ABOUT: Final = "About Pullgate"
MENU_QUIT: Final = "Quit tray"

# --- policy description -------------------------------------------------------------------
POLICY_LABEL: Final = "{org} policy #{serial}"
POLICY_LABEL_NO_ORG: Final = "{enforcing}"
POLICY_STATE: Final = {
    "fresh": "fresh",
    "stale": "stale",
    "expired": "expired",
    "fallback": "not verified yet (fallback)",
    "local": "local file",
    "default": "built-in default",
}
POLICY_WITH_STATE: Final = "{label} — {state}"
AGE_SECONDS: Final = "{n} s"
AGE_MINUTES: Final = "{n} min"
AGE_HOURS: Final = "{n} h"
AGE_DAYS: Final = "{n} days"
AGE_AGO: Final = "{age} ago"

# --- notifications ------------------------------------------------------------------------
VERB_BLOCKED: Final = {
    "image-pull": "Pull blocked",
    "image-build": "Build blocked",
    "image-load": "Load blocked",
    "image-import": "Import blocked",
    "container-create": "Run blocked",
    "plugin-pull": "Plugin pull blocked",
    "service-create": "Service blocked",
    "image-tag": "Tag blocked",
    "container-commit": "Commit blocked",
    "container-exec": "Privileged exec blocked",
    "container-start": "Start blocked",
    "volume-create": "Volume blocked",
}
VERB_WOULD_BLOCK: Final = {
    "image-pull": "Pull would be blocked",
    "image-build": "Build would be blocked",
    "container-create": "Run would be blocked",
}
VERB_ALLOWED: Final = "Allowed"
BLOCKED_OTHER: Final = "Blocked"
WOULD_BLOCK_OTHER: Final = "Would be blocked"
TITLE_ONE: Final = "{verb}: {image}"
TITLE_NO_IMAGE: Final = "{verb}"
TITLE_MANY: Final = "{count} pulls blocked"
TITLE_MANY_WOULD: Final = "{count} pulls would be blocked (monitor mode)"
BODY_MANY_MORE: Final = "… and {count} more"
BODY_MANY_HINT: Final = "Click for why and what to use instead."
BODY_MONITOR_NOTE: Final = "Monitor mode: the pull went ahead, but is recorded."
REMEDY_ALTERNATIVE: Final = "Use the official image '{alternative}' instead."
REMEDY_DEFAULT: Final = "Click for why, and whom to ask."

# --- why window ------------------------------------------------------------------------------
WHY_TITLE: Final = "Why was this blocked?"
WHY_TITLE_WOULD: Final = "Why would this be blocked?"
WHY_ALLOWED_TITLE: Final = "Why was this allowed?"
WHY_NOTHING: Final = "No pull has been blocked since the tray started."
WHY_BATCH: Final = "Blocked together"
WHY_IMAGE: Final = "Image"
WHY_AS_TYPED: Final = "As typed"
WHY_CATEGORY: Final = "Category"
WHY_RULE: Final = "Rule"
WHY_REASON: Final = "Reason"
WHY_MESSAGE: Final = "Full message"
WHY_MESSAGE_SHOW: Final = "Show the &full message"
WHY_MESSAGE_HIDE: Final = "Hide the &full message"
WHY_MESSAGE_NAME: Final = "The full message docker printed, to paste to your IT team"
WHY_COPY_MESSAGE: Final = "Copy &message"
WHY_COPY_MESSAGE_NAME: Final = "Copy the full message docker printed"
WHY_POLICY: Final = "Policy"
WHY_WHAT_TO_DO: Final = "What to do"
WHY_CONTACT: Final = "Contact"
WHY_TIME: Final = "Time"
WHY_COMMAND: Final = "Command"
WHY_PROCESS: Final = "Process"
WHY_DETAIL: Final = "Where"
WHY_COPY: Final = "&Copy command"
WHY_COPY_NAME: Final = "Copy the alternative command"
WHY_COPIED: Final = "Copied: {text}"
WHY_REQUEST: Final = "&Request access…"
WHY_REQUEST_NAME: Final = "Request access: opens your organisation's help page for this image"
WHY_CLOSE: Final = "Close"
WHY_NONE: Final = "—"
WHY_ALTERNATIVE_COMMAND: Final = "docker pull {alternative}"
WHY_POLICY_CHANGED: Final = "{policy} (now enforcing {current})"
WHY_REMEDY_REQUEST: Final = (
    "Ask your IT administrator to allow it (Request access…), or use an image the policy "
    "allows — check one with `pullgate check IMAGE`."
)
WHY_REMEDY_ASK: Final = (
    "Ask your IT administrator to allow it, or use an image the policy allows — check one "
    "with `pullgate check IMAGE`."
)
CATEGORY: Final = {
    "org": "your organisation's images",
    "official": "Docker Official Image",
    "verified_publisher": "Verified Publisher",
    "sponsored_oss": "Sponsored open source",
    "community": "Docker Hub community image",
    "other_registry": "another registry",
}

# --- decisions list ---------------------------------------------------------------------------
DECISIONS_TITLE: Final = "Recent decisions"
DECISIONS_FILTER: Final = "&Show:"
DECISIONS_FILTER_NAME: Final = "Which decisions to show"
DECISIONS_SEARCH: Final = "Filter by image…"
DECISIONS_SEARCH_NAME: Final = "Filter the decisions by image name"
DECISIONS_LIST_NAME: Final = "Recent decisions, newest first"
DECISIONS_ALL: Final = "All"
DECISIONS_VERDICT: Final = {"allow": "Allowed", "deny": "Blocked", "would_deny": "Would block"}
DECISIONS_COLUMNS: Final = ("Time", "Decision", "Image", "Reason")
DECISIONS_ROW: Final = "{time}, {verdict}: {image} — {reason}"  # read aloud; rows() in tests
DECISIONS_WHY: Final = "&Why?"
DECISIONS_WHY_NAME: Final = "Explain the selected decision"
DECISIONS_LOAD_FAILED: Final = "Could not load earlier decisions: {error}"

# --- status page -------------------------------------------------------------------------------
STATUS_TITLE: Final = "Pullgate status"
STATUS_AGENT: Final = "Agent"
STATUS_AGENT_RUNNING: Final = "running (version {version}, pid {pid}, up {uptime})"
STATUS_AGENT_DOWN: Final = "not running: {error}"
STATUS_MODE: Final = "Mode"
STATUS_MODE_VALUE: Final = {
    "enforce": "enforce: denied pulls are blocked",
    "monitor": "monitor: denied pulls are recorded, not blocked",
}
STATUS_POLICY: Final = "Policy"
STATUS_FRESHNESS: Final = "Freshness"
STATUS_FRESHNESS_VALUE: Final = "{state}; issued {age} ago, expires {expires}"
STATUS_IDENTITY: Final = "Signed in"
STATUS_IDENTITY_VALUE: Final = "{who} until {until}"
STATUS_IDENTITY_NONE: Final = "no"
STATUS_IDENTITY_REQUIRED: Final = "no — your organisation requires sign-in"
STATUS_IDENTITY_UNCONFIGURED: Final = "sign-in is not configured"
STATUS_DOCKER: Final = "Docker"
STATUS_DOCKER_UNKNOWN: Final = "not checked yet (Run diagnostics)"
STATUS_DOCKER_OK: Final = "pointed at Pullgate"
STATUS_AUDIT: Final = "Audit log"
STATUS_AUDIT_OK: Final = "healthy, in {dir}"
STATUS_PROBLEMS: Final = "Needs attention"
STATUS_NONE: Final = "none"
STATUS_REFRESHED: Final = "Status as of {time}"

# --- actions ----------------------------------------------------------------------------------
REFRESH_RUNNING: Final = "Refreshing the policy…"
REFRESH_DONE: Final = "Policy refresh: {result}"
REFRESH_FAILED: Final = "Policy refresh failed: {message}"
REFRESH_TITLE: Final = "Refresh policy"
DIAGNOSTICS_TITLE: Final = "Diagnostics (pullgate doctor)"
DIAGNOSTICS_RUNNING: Final = "Running pullgate doctor…"
DIAGNOSTICS_COPY: Final = "&Copy output"
DIAGNOSTICS_COPY_NAME: Final = "Copy the diagnostics output"
DIAGNOSTICS_OUTPUT_NAME: Final = "Diagnostics output"
DIAGNOSTICS_RERUN: Final = "&Run again"
DIAGNOSTICS_FAILED_START: Final = "Could not run pullgate doctor: {error}"
DIAGNOSTICS_EXIT: Final = "pullgate doctor exited with {code}"
DIAGNOSTICS_LINE: Final = "{result:<5} {name}: {detail}"
DIAGNOSTICS_FIX: Final = "      fix: {fix}"
AUDIT_UNREADABLE: Final = "The audit log folder {dir} is not readable by you."
AUDIT_UNKNOWN: Final = "The agent has not said where its audit log is."
ABOUT_TITLE: Final = "About Pullgate"
ABOUT_TEXT: Final = (
    "Pullgate tray {tray}\nAgent {agent}\nPython {python}\nQt {qt} (PySide6 {pyside})\n\n"
    "Pullgate checks every container image pull on this machine against your "
    "organisation's policy."
)
UNKNOWN: Final = "unknown"
COPY_DONE: Final = "Copied to the clipboard."

# --- sign-in -------------------------------------------------------------------------------------
SIGN_IN_TITLE: Final = "Sign in to your organisation"
SIGN_IN_HEADING: Final = "Sign in to {org}"
SIGN_IN_HEADING_NO_ORG: Final = "Sign in to your organisation"
SIGN_IN_INTRO: Final = (
    "Sign in with your organisation's account at {host}, so that the rules your "
    "organisation set for you apply to your pulls."
)
SIGN_IN_STEP_OPEN: Final = "1. Open this page in any browser:"
SIGN_IN_STEP_CODE: Final = "2. Enter this code:"
SIGN_IN_CODE_WAITING: Final = (
    "Waiting for you to enter the code (it expires in {minutes} min); this window says "
    "when you are signed in."
)
SIGN_IN_BROWSER: Final = "Sign in with &browser"
SIGN_IN_BROWSER_NAME: Final = "Sign in in a browser on this computer"
SIGN_IN_DEVICE: Final = "Sign in with a &code"
SIGN_IN_DEVICE_NAME: Final = "Sign in with a code in any browser"
SIGN_IN_CANCEL: Final = "Cancel"
SIGN_IN_CLOSE: Final = "Close"
SIGN_IN_COPY_CODE: Final = "&Copy code"
SIGN_IN_COPY_CODE_NAME: Final = "Copy the sign-in code"
SIGN_IN_OPEN: Final = "&Open browser"
SIGN_IN_OPEN_NAME: Final = "Open the sign-in page in a browser"
SIGN_IN_CODE_NAME: Final = "Sign-in code"
SIGN_IN_STATUS_NAME: Final = "Sign-in progress"
SIGN_IN_SILENT: Final = "Renewing your stored sign-in…"
SIGN_IN_SILENT_FAILED: Final = "Could not renew the stored sign-in ({error}); sign in again."
SIGN_IN_STARTING: Final = "Contacting {host}…"
SIGN_IN_WAITING_BROWSER: Final = "Waiting for the browser (up to {seconds:.0f} s)…"
SIGN_IN_SLOWER: Final = "The provider asked to check less often: every {seconds:.0f} s now."
SIGN_IN_SENDING: Final = "Signed in at the provider as {who}; handing it to the agent…"
SIGN_IN_DONE: Final = "Signed in as {who} until {until}."
SIGN_IN_NOT_STORED: Final = "Your sign-in was not stored: {problem}."
SIGN_IN_FAILED: Final = "Sign-in failed: {error}"
SIGN_IN_AGENT_REFUSED: Final = "The agent refused the sign-in: {message}"
SIGN_IN_AGENT_UNREACHABLE: Final = (
    "Signed in at the provider, but the agent did not get it: {error}"
)
SIGN_IN_CANCELLED: Final = "Sign-in cancelled; nothing was stored."
SIGN_IN_NOT_CONFIGURED: Final = "Sign-in is not configured by your organisation (no oidc_issuer)."
SIGN_OUT_TITLE: Final = "Sign out"
SIGN_OUT_STEP: Final = "{step}: {detail}"
SIGN_OUT_STEP_FAILED: Final = "{step}: FAILED: {detail}"
SIGN_OUT_PROVIDER: Final = "Provider"
SIGN_OUT_KEYCHAIN: Final = "Keychain"
SIGN_OUT_AGENT: Final = "Agent"
SIGN_OUT_FORGOT: Final = "forgot your identity"
SIGN_OUT_HELD_NONE: Final = "held no identity for you"
SIGN_OUT_SKIPPED: Final = "skipped: sign-in is not configured"
