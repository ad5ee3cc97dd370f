"""Answers the title of a web page, parsed with Beautiful Soup (installed from
requirements.txt). PAGE_URL names the page; by default, Google's home page."""

import os
import urllib.request

from bs4 import BeautifulSoup


def foo(event, context):
    url = os.environ.get("PAGE_URL", "https://www.google.com/")
    with urllib.request.urlopen(url, timeout=10) as page:
        return BeautifulSoup(page.read(), "html.parser").title.string
