"""The Dagster UI driven through Debian's Chromium by Playwright."""
