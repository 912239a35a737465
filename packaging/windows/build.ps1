# Build Pullgate's MSI on a Windows runner: freeze the onedir bundle with PyInstaller, sign
# the executables, write the bundle's WiX fragment, compile and link with WiX 3 (candle,
# light), sign the MSI. Everything goes under -Out (default build\windows, gitignored):
#   dist\pullgate\          the frozen bundle (pullgate.exe, pullgate-tray.exe, _internal\)
#   PolicyDefinitions\      Pullgate.admx and en-US\Pullgate.adml, for GPO and Intune
#   Pullgate-<version>-x64.msi
#
# NOT RUN HERE: Pullgate's CI machines are Debian. There, tests/test_packaging_windows.py
# builds the same Pullgate.wxs with wixl around a stand-in payload and checks its tables;
# freezing, signing, candle/light and a real install need this script on Windows
# (docs/deploy/windows.md, "What was built and tested").
#
# Needs: Python 3.11 x64, WiX Toolset 3.14 (candle.exe, light.exe on PATH or in
# $env:WIX\bin), the Windows SDK's signtool.exe for -CertificateThumbprint.
#
# Usage (PowerShell, from the checkout):
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build.ps1 [-Version 0.1.0]
#       [-Out build\windows] [-CertificateThumbprint <SHA-1 of a code-signing cert>]
#       [-TimestampUrl http://timestamp.digicert.com] [-Bundle <existing dist dir>]

[CmdletBinding()]
param(
    [string]$Version = "",
    [string]$Out = "build\windows",
    [string]$CertificateThumbprint = "",
    [string]$TimestampUrl = "http://timestamp.digicert.com",
    [string]$Bundle = ""
)

$ErrorActionPreference = "Stop"
Set-StrictMode -Version Latest
$Root = (Resolve-Path (Join-Path $PSScriptRoot "..\..")).Path
Set-Location $Root

function Invoke-Checked {
    param([string]$Exe, [string[]]$Arguments)
    Write-Host "+ $Exe $($Arguments -join ' ')"
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$Exe failed with exit code $LASTEXITCODE" }
}

function Find-Tool {
    param([string]$Name)
    $cmd = Get-Command $Name -ErrorAction SilentlyContinue
    if ($cmd) { return $cmd.Source }
    if ($env:WIX -and (Test-Path (Join-Path $env:WIX "bin\$Name"))) { return (Join-Path $env:WIX "bin\$Name") }
    throw "$Name not found: install WiX Toolset 3.14 (or put it on PATH)"
}

function Sign-Files {
    param([string[]]$Paths)
    if (-not $CertificateThumbprint) { return }
    $signtool = (Get-Command signtool.exe -ErrorAction Stop).Source
    Invoke-Checked $signtool (@("sign", "/sha1", $CertificateThumbprint, "/fd", "SHA256",
        "/tr", $TimestampUrl, "/td", "SHA256") + $Paths)
    Invoke-Checked $signtool (@("verify", "/pa") + $Paths)
}

# 1. The development venv (the same dependencies as on Linux; uvloop and jeepney are
#    Linux-only by their markers in pyproject.toml).
$Python = Join-Path $Root ".venv\Scripts\python.exe"
if (-not (Test-Path $Python)) {
    Invoke-Checked "py" @("-3.11", "-m", "venv", ".venv")
    Invoke-Checked $Python @("-m", "pip", "install", "--upgrade", "pip")
    Invoke-Checked $Python @("-m", "pip", "install", "-e", ".[dev]")
}
if (-not $Version) {
    $Version = & $Python -c "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])"
}
New-Item -ItemType Directory -Force -Path $Out | Out-Null
$Out = (Resolve-Path $Out).Path

# 2. The frozen bundle: the same spec as the Linux packages (onedir, every lazily imported
#    module collected; distributions absent on Windows are skipped), with the tray.
if (-not $Bundle) {
    $env:PULLGATE_WITH_TRAY = "1"
    Invoke-Checked $Python @("-m", "PyInstaller", "--noconfirm", "--clean",
        "--distpath", (Join-Path $Out "dist"), "--workpath", (Join-Path $Out "work"),
        "packaging\linux\pullgate.spec")
    $Bundle = Join-Path $Out "dist\pullgate"
}
$Bundle = (Resolve-Path $Bundle).Path
foreach ($exe in @("pullgate.exe", "pullgate-tray.exe")) {
    if (-not (Test-Path (Join-Path $Bundle $exe))) { throw "$Bundle has no $exe" }
}
# The frozen CLI must load every subcommand before it is packed (as on Linux).
Invoke-Checked (Join-Path $Bundle "pullgate.exe") @("check", "alpine")

# 3. Sign what the MSI installs that is ours (signtool signs PE files only).
Sign-Files @((Join-Path $Bundle "pullgate.exe"), (Join-Path $Bundle "pullgate-tray.exe"))

# 4. The templates (the committed copies, which a test keeps equal to the registry) and
#    the bundle's fragment.
$Policy = Join-Path $Out "PolicyDefinitions"
Invoke-Checked $Python @("-m", "agent.config", "--admx", $Policy)
$Fragment = Join-Path $Out "bundle.wxs"
Invoke-Checked $Python @("packaging\windows\wxs.py", $Bundle, "-o", $Fragment)

# 5. candle and light (WiX 3). Forward slashes in the sources' paths are fine on Windows.
$candle = Find-Tool "candle.exe"
$light = Find-Tool "light.exe"
$Obj = Join-Path $Out "obj\"
Invoke-Checked $candle @("-nologo", "-arch", "x64", "-dVersion=$Version", "-dBundleDir=$Bundle",
    "-dPolicyDir=$Policy", "-out", $Obj, "packaging\windows\Pullgate.wxs", $Fragment)
$Msi = Join-Path $Out "Pullgate-$Version-x64.msi"
Invoke-Checked $light @("-nologo", "-out", $Msi, (Join-Path $Obj "Pullgate.wixobj"),
    (Join-Path $Obj "bundle.wixobj"))

# 6. Sign the MSI itself (Intune and SmartScreen check the package's signature).
Sign-Files @($Msi)
Write-Host "built $Msi"
Write-Host "templates for GPO's central store and Intune: $Policy"
