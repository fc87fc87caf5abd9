"""Render cost per message on the hot path: templates compiled once, rendered N times.

    .venv/bin/python bench/templates.py

Prints one JSON line of microseconds per call.
"""
import json, time
from pipeline.templates import CompiledTemplate, TemplateContent, message_variables
from pipeline.channels.mime import build_email, format_address

profile = {"user_id": 123456, "first_name": "Zoé", "last_name": "Martin", "email": "zoe@example.com", "country": "FR",
           "language": "fr", "timezone": "Europe/Paris", "attributes": {"plan": "gold", "points": 1234}}
email = CompiledTemplate(TemplateContent("email", {
    "subject": "{{ first_name | default('Hi') }}, {{ discount }} off for {{ attributes.plan | title }} members",
    "html": "<html><body><h1>Hello {{ first_name }}</h1><p>Use <b>{{ code }}</b> before Sunday.</p>"
            "<p><a href=\"https://shop.example/sale?u={{ user_id }}\">Shop now</a></p>"
            "<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></body></html>",
    "text": "Hello {{ first_name }}, use {{ code }} before Sunday. https://shop.example/sale?u={{ user_id }}"}))
sms = CompiledTemplate(TemplateContent("sms", {"body": "Hi {{ first_name }}, {{ discount }} off with {{ code }}"}))
push = CompiledTemplate(TemplateContent("push", {"title": "{{ first_name }}, sale!", "body": "{{ discount }} off today"}))
variables = {"discount": "20%", "code": "SUN20"}
N = 50_000

def timeit(fn):
    fn()
    t = time.perf_counter()
    for _ in range(N):
        fn()
    return round((time.perf_counter() - t) / N * 1e6, 2)

ctx = message_variables(profile, variables, {"unsubscribe_url": "https://h.example/u/abc"})
sender = format_address("Herald <campaigns@herald.local>")
r = email.render(ctx, "en")
print(json.dumps({
    "message_variables_us": timeit(lambda: message_variables(profile, variables, {"unsubscribe_url": "u"})),
    "email_render_subject_html_text_us": timeit(lambda: email.render(ctx, "en")),
    "sms_render_us": timeit(lambda: sms.render(ctx, "en")),
    "push_render_subject_body_us": timeit(lambda: push.render(ctx, "en")),
    "email_mime_bytes_us": timeit(lambda: build_email(sender=sender, to="zoe@example.com", subject=r.parts["subject"],
                                                       text=r.parts["text"], html=r.parts["html"], message_id="m-1",
                                                       headers={"List-Unsubscribe": "<https://h.example/u/abc>"})),
}))
