"""Every marketing email ends with the sender's postal address and an unsubscribe link (CAN-SPAM)."""

from __future__ import annotations

from config import Settings
from pipeline.email_footer import html_footer, text_footer, with_footer
from pipeline.unsubscribe import list_unsubscribe_headers

ADDRESS = "Acme & Co, 1 Main St, Springfield"
URL = "https://h.example/u/TOKEN"


def test_the_text_part_ends_with_the_address_and_the_link():
    assert text_footer("Hello\n", ADDRESS, URL) == f"Hello\n\n--\n{ADDRESS}\nUnsubscribe: {URL}\n"


def test_a_body_that_already_links_the_unsubscribe_url_gets_no_second_link():
    assert text_footer(f"Bye: {URL}", ADDRESS, URL).count(URL) == 1
    assert html_footer(f'<a href="{URL}">out</a>', ADDRESS, URL).count(URL) == 1


def test_the_html_footer_goes_inside_the_body_with_the_address_escaped():
    out = html_footer("<html><body><p>Hi</p></BODY></html>", ADDRESS, URL)
    assert out.endswith("</BODY></html>")
    assert "Acme &amp; Co, 1 Main St, Springfield" in out
    assert f'<a href="{URL}">Unsubscribe</a>' in out


def test_an_html_only_email_gets_a_text_part_with_the_address():
    parts = with_footer({"subject": "S", "html": "<p>Hi</p>"}, ADDRESS, URL)
    assert ADDRESS in parts["text"] and "Acme &amp; Co" in parts["html"] and parts["subject"] == "S"


def test_list_unsubscribe_offers_one_click_https_and_mailto_when_configured():
    headers = list_unsubscribe_headers(Settings(public_url="https://h.example"), "TOKEN")
    assert headers == {"List-Unsubscribe": "<https://h.example/u/TOKEN>",
                       "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    mailto = list_unsubscribe_headers(Settings(public_url="https://h.example", list_unsubscribe_mailto="out@h.example"),
                                      "TOKEN")["List-Unsubscribe"]
    assert mailto == "<https://h.example/u/TOKEN>, <mailto:out@h.example?subject=unsubscribe%20TOKEN>"
