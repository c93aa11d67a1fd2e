"""Message templates in zh-CN and en, chosen by the recipient's locale, each tied to the categories it may use."""

from __future__ import annotations

import string
from dataclasses import dataclass

DEFAULT_LOCALE = "zh-CN"
LOCALES = ("zh-CN", "en")

SECURITY, TRANSACTIONAL, MARKETING = "SECURITY", "TRANSACTIONAL", "MARKETING"


@dataclass(frozen=True)
class MessageTemplate:
    name: str
    # A one-time code must not go out as marketing, nor an offer as a security notice.
    categories: frozenset[str]
    subject: dict[str, str]
    body: dict[str, str]

    def params(self) -> set[str]:
        """The ${names} the template needs."""
        names: set[str] = set()
        for text in [*self.subject.values(), *self.body.values()]:
            names.update(
                m.group("named") or m.group("braced")
                for m in string.Template.pattern.finditer(text)
                if m.group("named") or m.group("braced")
            )
        return names


def _t(name: str, categories: set[str], subject: tuple[str, str], body: tuple[str, str]) -> MessageTemplate:
    return MessageTemplate(
        name, frozenset(categories), dict(zip(LOCALES, subject, strict=True)), dict(zip(LOCALES, body, strict=True))
    )


_ALL = [
    # -- transactional receipts (from payments and identity events) --
    _t(
        "payment_sent",
        {TRANSACTIONAL},
        ("付款成功", "Payment sent"),
        (
            "您已成功付款 ${amount} ${currency}（付款编号 ${payment_id}）。",
            "You paid ${amount} ${currency} (payment ${payment_id}).",
        ),
    ),
    _t(
        "payment_received",
        {TRANSACTIONAL},
        ("收款到账", "Payment received"),
        (
            "您已收到 ${amount} ${currency}（付款编号 ${payment_id}）。",
            "You received ${amount} ${currency} (payment ${payment_id}).",
        ),
    ),
    _t(
        "payment_held",
        {TRANSACTIONAL},
        ("付款审核中", "Payment under review"),
        (
            "您的付款 ${amount} ${currency} 正在审核中（付款编号 ${payment_id}）。",
            "Your payment of ${amount} ${currency} is being reviewed (payment ${payment_id}).",
        ),
    ),
    _t(
        "topup_succeeded",
        {TRANSACTIONAL},
        ("充值成功", "Top-up succeeded"),
        ("充值成功：${amount} ${currency}。", "Top-up of ${amount} ${currency} succeeded."),
    ),
    _t(
        "welcome",
        {TRANSACTIONAL},
        ("欢迎使用 finmesh", "Welcome to finmesh"),
        (
            "欢迎使用 finmesh。请完成实名认证后开始交易。",
            "Welcome to finmesh. Complete identity verification to start transacting.",
        ),
    ),
    _t(
        "account_frozen",
        {SECURITY, TRANSACTIONAL},
        ("账户已冻结", "Account frozen"),
        (
            "您的账户 ${account_id} 已被冻结。如有疑问请联系客服。",
            "Your account ${account_id} has been frozen. Contact support if this is unexpected.",
        ),
    ),
    # -- security --
    _t(
        "verification_code",
        {SECURITY},
        ("您的验证码", "Your verification code"),
        (
            "【finmesh】您的验证码是 ${code}，${minutes} 分钟内有效。请勿告诉他人。",
            "[finmesh] Your verification code is ${code}. It expires in ${minutes} minutes. Never share it.",
        ),
    ),
    _t(
        "security_alert",
        {SECURITY},
        ("账户安全提醒", "Security alert"),
        (
            "【finmesh】您的账户发生了 ${action}（${when}）。如非本人操作，请立即修改密码并联系客服。",
            "[finmesh] ${action} on your account (${when}). If this was not you, change your password "
            "and contact support now.",
        ),
    ),
    # -- operators --
    _t(
        "operator_risk_alert",
        {SECURITY},
        ("[风控预警 ${level}] ${alert_id}", "[Risk alert ${level}] ${alert_id}"),
        (
            "风控预警 ${alert_id}：等级 ${level}，用户 ${user_id}，账户 ${account_id}，付款 ${payment_id}，"
            "原因：${reasons}。请立即处理。",
            "Risk alert ${alert_id}: level ${level}, user ${user_id}, account ${account_id}, "
            "payment ${payment_id}, reasons: ${reasons}. Please act now.",
        ),
    ),
    _t(
        "complaint_escalated",
        {TRANSACTIONAL},
        ("[投诉超时] ${complaint_id}", "[Complaint overdue] ${complaint_id}"),
        (
            "投诉 ${complaint_id} 的${stage}时限（${due}）已过，当前状态 ${state}。请立即处理。",
            "Complaint ${complaint_id} missed its ${stage} deadline (${due}); it is ${state}. Please act now.",
        ),
    ),
    _t(
        "complaint_received",
        {TRANSACTIONAL},
        ("投诉已受理登记", "Complaint registered"),
        (
            "您的投诉（编号 ${complaint_id}）已登记，我们将在 24 小时内受理，5 个工作日内处理完毕。",
            "Your complaint (${complaint_id}) is registered. We accept it within 24 hours and resolve it "
            "within 5 business days.",
        ),
    ),
    # -- marketing: every message says how to opt out (seed 5.4) --
    _t(
        "marketing_offer",
        {MARKETING},
        ("${title}", "${title}"),
        ("【finmesh】${title}：${details} 回复 TD 退订。", "[finmesh] ${title}: ${details} Reply STOP to opt out."),
    ),
    _t(
        "marketing_newsletter",
        {MARKETING},
        ("finmesh 资讯：${title}", "finmesh news: ${title}"),
        (
            "${details}\n\n如不希望再收到此类邮件，请在应用内关闭营销消息。",
            "${details}\n\nTo stop these e-mails, turn off marketing messages in the app.",
        ),
    ),
]

TEMPLATES: dict[str, MessageTemplate] = {t.name: t for t in _ALL}


def resolve_locale(requested: str, profile: str = "") -> str:
    """The request's locale, else the user's, else zh-CN; unknown ones fall back too."""
    for candidate in (requested, profile):
        if candidate in LOCALES:
            return candidate
        if candidate and candidate.split("-")[0].lower() == "en":
            return "en"
        if candidate and candidate.split("-")[0].lower() == "zh":
            return "zh-CN"
    return DEFAULT_LOCALE


def render(template: str, locale: str, params: dict[str, str]) -> str:
    """Render the body of `template` in `locale` (falling back to zh-CN); unknown names raise KeyError."""
    texts = TEMPLATES[template].body
    return string.Template(texts.get(locale) or texts[DEFAULT_LOCALE]).safe_substitute(params)


def render_subject(template: str, locale: str, params: dict[str, str]) -> str:
    texts = TEMPLATES[template].subject
    return string.Template(texts.get(locale) or texts[DEFAULT_LOCALE]).safe_substitute(params)


def missing_params(template: str, params: dict[str, str]) -> list[str]:
    return sorted(TEMPLATES[template].params() - set(params))
