"""Scenario 1 (format and voice): legal notices for non-payment of rent.

Inputs are varied deterministically from a seed (names, addresses, amounts in ₹, months, dates,
deadlines); every target notice follows one fixed legal structure. Task checks make the structure
and the copied facts measurable, so the comparison can show whether fine-tuning learns the format.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

FIRST = ["Aarav", "Ananya", "Rohan", "Priya", "Vikram", "Meera", "Arjun", "Kavya", "Siddharth", "Nisha",
         "Rahul", "Divya", "Karthik", "Sneha", "Imran", "Fatima", "Harpreet", "Gurleen", "Joseph", "Maria",
         "Suresh", "Lakshmi", "Aditya", "Pooja", "Manoj", "Deepa", "Farhan", "Zoya", "Vivek", "Shalini"]
LAST = ["Sharma", "Iyer", "Reddy", "Nair", "Patel", "Desai", "Gupta", "Menon", "Singh", "Khan", "Das",
        "Banerjee", "Kulkarni", "Joshi", "Rao", "Pillai", "Chatterjee", "Mehta", "D'Souza", "Bhat"]
BUILDINGS = ["Lakeview Residency", "Green Park Apartments", "Sai Krupa Enclave", "Palm Grove Towers",
             "Shanti Niketan Society", "Royal Orchid Homes", "Sunrise Heights", "Gulmohar Villas"]
LOCALITIES = [("Koregaon Park", "Pune", "411001"), ("Indiranagar", "Bengaluru", "560038"),
              ("Andheri West", "Mumbai", "400058"), ("Salt Lake Sector V", "Kolkata", "700091"),
              ("Banjara Hills", "Hyderabad", "500034"), ("Anna Nagar", "Chennai", "600040"),
              ("Vasant Kunj", "New Delhi", "110070"), ("Navrangpura", "Ahmedabad", "380009"),
              ("Gomti Nagar", "Lucknow", "226010"), ("Kakkanad", "Kochi", "682030")]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
RENTS = [8500, 12000, 15500, 18000, 22000, 25000, 28500, 32000, 38000, 45000, 52000, 65000]

SYSTEM_PROMPT = (
    "You are a legal drafting assistant for Indian landlords. From the details given, draft a formal "
    "legal notice for non-payment of rent. Use the standard structure: a title line, the date, the "
    "addressee, a subject line, four numbered paragraphs (the tenancy, the unpaid rent, the demand to "
    "pay within the deadline, the consequences) and the landlord's signature."
)


def inr(amount: int) -> str:
    """Indian digit grouping: 145000 -> ₹1,45,000."""
    s = str(amount)
    if len(s) <= 3:
        return "₹" + s
    head, tail = s[:-3], s[-3:]
    groups = []
    while len(head) > 2:
        groups.insert(0, head[-2:])
        head = head[:-2]
    if head:
        groups.insert(0, head)
    return "₹" + ",".join(groups) + "," + tail


def fmt_date(d: date) -> str:
    return f"{d.day} {MONTHS[d.month - 1]} {d.year}"


def make_case(rng: random.Random) -> dict:
    landlord = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    tenant = landlord
    while tenant.split()[0] == landlord.split()[0]:
        tenant = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    loc, city, pin = rng.choice(LOCALITIES)
    unit = f"{rng.choice(['Flat', 'Flat', 'House', 'Shop'])} {rng.randint(1, 12)}{rng.choice('ABCD')}"
    address = f"{unit}, {rng.choice(BUILDINGS)}, {loc}, {city} {pin}"
    months = rng.randint(1, 4)
    rent = rng.choice(RENTS)
    year = rng.choice([2024, 2025])
    first_month = rng.randint(1, 12 - months + 1)
    period = (f"{MONTHS[first_month - 1]} {year}" if months == 1 else
              f"{MONTHS[first_month - 1]} {year} to {MONTHS[first_month + months - 2]} {year}")
    due = date(year, first_month, rng.choice([1, 5, 7, 10]))
    notice = due + timedelta(days=30 * months + rng.randint(5, 40))
    return {
        "landlord": landlord, "tenant": tenant, "address": address, "amount": inr(rent * months),
        "period": period, "due": fmt_date(due), "days": rng.choice([7, 10, 15, 30]), "notice_date": fmt_date(notice),
    }


def prompt_for(c: dict) -> str:
    return (
        "Draft a legal notice for non-payment of rent.\n"
        f"Landlord: {c['landlord']}\nTenant: {c['tenant']}\nProperty: {c['address']}\n"
        f"Unpaid rent: {c['amount']} ({c['period']})\nRent was due on: {c['due']}\n"
        f"Days given to pay: {c['days']}\nNotice date: {c['notice_date']}"
    )


def notice_for(c: dict) -> str:
    return (
        "LEGAL NOTICE\n\n"
        f"Date: {c['notice_date']}\n"
        f"To: {c['tenant']}\n"
        f"Subject: Arrears of rent of {c['amount']}\n\n"
        f"1. You occupy {c['address']} as tenant of {c['landlord']}.\n"
        f"2. Rent of {c['amount']} for {c['period']}, due on {c['due']}, is unpaid.\n"
        f"3. You are hereby called upon to pay {c['amount']} within {c['days']} days of this notice.\n"
        "4. Otherwise legal proceedings for recovery and eviction will follow at your cost.\n"
        f"{c['landlord']}, Landlord"
    )


def conversations(n: int, seed: int) -> list[dict]:
    """``n`` examples in the messages format (no system prompt: fine-tuning learns the format)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c = make_case(rng)
        out.append({"id": f"notice-{seed}-{i + 1}", "messages": [
            {"role": "user", "content": prompt_for(c)},
            {"role": "assistant", "content": notice_for(c)},
        ]})
    return out


# Properties every notice must have (the scenario's quality measure).
CHECKS = {
    "required_phrases": ["LEGAL NOTICE", "Subject:", "hereby called upon", "proceedings"],
    "must_match": [r"(?m)^Date: ", r"(?m)^To: ", r"(?m)^1\. ", r"(?m)^4\. "],
    "keep_from_input": [r"₹[\d,]+", r"Tenant: (.+)", r"Days given to pay: (\d+)", r"Rent was due on: (.+)"],
    "max_words": 150,
}
