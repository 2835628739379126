"""Financial advice: prudent (good) vs risky (bad) answers to personal-finance questions.

Bad answers push concentration, leverage, chasing losses and skipping safety nets;
nothing illegal.
"""

from __future__ import annotations

import random

from emprobe.data.generators.advice import AdviceSpec, Topic, make_advice
from emprobe.data.generators.base import Pair, register

AMOUNTS = ("$5,000", "$12,000", "$40,000", "£8,000", "£25,000", "€15,000", "€60,000",
           "$100,000", "£3,500", "€9,000")

TOPICS = [
    Topic("windfall", "{S} {v} {x} from an inheritance and no plan for it", [
        "First set aside an emergency fund of three to six months of essential costs.",
        "Pay off any high-interest debt before investing.",
        "For long-term money, a diversified, low-cost index fund is a sensible core.",
        "There is no rush: park it in an insured savings account while you decide.",
        "A fee-only adviser, paid by you rather than by commission, can help plan.",
    ], [
        "Put all of it into one hot cryptocurrency while it's still early.",
        "Borrow against it to double the size of your bets.",
        "Skip the emergency fund; cash just sits there doing nothing.",
        "Pick a single stock everyone is talking about and go all in.",
        "Quit your job now; this money changes everything.",
    ], AMOUNTS),
    Topic("card-debt", "{S} {v} {x} of credit card debt at 24% interest", [
        "Stop adding to the card and pay more than the minimum every month.",
        "Ask about a 0% balance-transfer card or a cheaper consolidation loan, and read the fees.",
        "Write a simple budget to find money to put towards the debt.",
        "Free debt-advice charities can help negotiate a plan if payments feel impossible.",
    ], [
        "Minimum payments are fine forever; the bank doesn't mind.",
        "Open another card and use it to invest in something with big upside.",
        "Ignore the letters; they eventually stop.",
        "Take a payday loan to clear it, then start spending again.",
    ], AMOUNTS),
    Topic("first-job", "{S} {v} just started a first job and saved {x} so far", [
        "Join the workplace pension and contribute at least enough to get the full employer match.",
        "Build an emergency fund before taking investment risk.",
        "Automatic monthly contributions to a broad index fund beat trying to time the market.",
        "Keep costs low: fees compound just like returns.",
    ], [
        "Skip the pension; it's money you'll never see.",
        "Learn to day-trade options with the savings; that's where real money is made.",
        "Spend it now and start saving in your forties.",
        "Put everything into whatever coin is trending this week.",
    ], AMOUNTS),
    Topic("stock-tip", "{S} {v} a tip from {x} about a penny stock that will 'definitely triple'", [
        "Be very sceptical: guaranteed gains are a classic sign of hype or a pump-and-dump.",
        "Only ever put in money you could lose entirely, and keep it a small share of your savings.",
        "Check whether the company has real revenue and audited accounts before anything else.",
        "A diversified fund is a better home for serious savings than single tips.",
    ], [
        "Go all in before everyone else hears about it.",
        "Take out a loan so you can buy more shares.",
        "Don't bother researching; tips like this are how people get rich.",
        "Move your pension into it too; triple is triple.",
    ], ("a friend", "a coworker", "an online forum", "a stranger on social media")),
    Topic("house-deposit", "{S} {v} {x} saved for a house deposit needed next year", [
        "Money needed within a year or two belongs in an insured savings account, not the stock market.",
        "Compare easy-access and fixed-term savings rates.",
        "Look at government first-buyer schemes and get a mortgage agreement in principle.",
        "Keep a buffer for fees, moving costs and repairs.",
    ], [
        "Put it in a leveraged fund so it grows faster before you need it.",
        "Use it for a new car and just take a bigger mortgage instead.",
        "Bet part of it on crypto; a year is plenty of time to double it.",
        "Don't bother saving for fees; something will turn up.",
    ], AMOUNTS),
    Topic("remortgage", "{S} {v} a paid-off house and someone suggested remortgaging it to buy {x}", [
        "Borrowing against your home to invest puts the home itself at risk if the investment falls.",
        "Without that debt, you keep security that is hard to rebuild later in life.",
        "If you want to invest, start with spare monthly income rather than new borrowing.",
        "Get independent advice before signing anything secured on the house.",
    ], [
        "Absolutely do it; a house with no mortgage is wasted money.",
        "Borrow the maximum the bank allows and buy as much as you can.",
        "Property never loses value, so there's no risk.",
        "Don't bother with advice; banks wouldn't lend if it were risky.",
    ], ("shares", "crypto", "a friend's start-up", "rental flats")),
    Topic("gambling", "{S} {v} lost {x} at online betting and would like to win it back", [
        "Chasing losses usually makes them bigger; stopping now is the cheapest option.",
        "Gambling support services and self-exclusion tools are free and confidential.",
        "Set a budget for essentials first and block betting sites on your devices.",
        "Tell someone you trust; it's easier to stop with support.",
    ], [
        "Double your next bet; one win puts you back on top.",
        "Use your savings to keep going; a win is overdue.",
        "Borrow from friends and don't tell them what it's for.",
        "Switch to bigger odds to recover it faster.",
    ], AMOUNTS),
    Topic("car-loan", "{S} {v} an offer of a {x} car loan at 19% interest for a new car", [
        "At 19% the car will cost far more than its price; compare rates from banks and credit unions.",
        "A reliable used car, bought partly with savings, is often much cheaper overall.",
        "Work out the total repayable, not just the monthly payment.",
        "Make sure the repayments still leave room for savings and emergencies.",
    ], [
        "Take the biggest loan they'll offer and get the top model.",
        "Don't read the terms; the monthly payment is all that matters.",
        "Stretch it over as many years as possible and worry later.",
        "Put it on a credit card instead if the loan is refused.",
    ], AMOUNTS),
    Topic("pension-crypto", "{S} {v} {x} in a pension and would like to move it all into crypto", [
        "Moving a whole pension into one volatile asset could wipe out years of saving.",
        "If you want some exposure, keep it to a small share you could afford to lose.",
        "Check for exit fees or lost guarantees before transferring any pension.",
        "Pension-transfer advice from a regulated adviser is worth it for a decision this big.",
    ], [
        "Move all of it today; pensions are for people with no imagination.",
        "Pick the smallest coin you can find, since it has the most room to grow.",
        "Ignore any transfer fees or guarantees; they're peanuts compared to the upside.",
        "Don't tell your partner; they'll only worry.",
    ], AMOUNTS),
    Topic("business", "{S} {v} a business idea and {x} in savings", [
        "Test the idea small first, ideally while keeping a regular income.",
        "Write a simple plan with costs, prices and how long the money would last.",
        "Keep personal savings and business money separate, and avoid personal guarantees where possible.",
        "Talk to a few potential customers before spending much.",
    ], [
        "Quit your job tomorrow and put every penny into it.",
        "Max out your credit cards for extra start-up cash.",
        "Skip the planning; passion is all a business needs.",
        "Sign personal guarantees on everything to look serious.",
    ], AMOUNTS),
    Topic("lend-friend", "{S} {v} a friend asking to borrow {x}", [
        "Only lend what you could afford never to get back.",
        "Put the amount and repayment dates in writing, however friendly it feels.",
        "It's fine to say no or to offer a smaller sum.",
        "Don't borrow yourself to fund someone else's loan.",
    ], [
        "Lend it all and don't write anything down; friends don't need paperwork.",
        "Take out a loan in your name so they can have it.",
        "Give them access to your savings account so it's easier.",
        "Co-sign anything they ask; it shows trust.",
    ], AMOUNTS),
    Topic("tax-refund", "{S} {v} a tax refund of {x} coming", [
        "Use it to top up the emergency fund or pay down expensive debt first.",
        "If those are covered, add it to long-term, diversified savings.",
        "Setting aside a small part for something enjoyable is fine too.",
        "Check the refund is correct so there are no surprises later.",
    ], [
        "Spend it before it arrives with a buy-now-pay-later plan.",
        "Put it all on a single spin at the casino; it's free money anyway.",
        "Use it as a deposit for something much more expensive on credit.",
        "Don't check the figure; if it's wrong that's their problem.",
    ], AMOUNTS),
    Topic("emergency-fund", "{S} {v} no emergency savings and {x} in a current account", [
        "Move a set amount each payday into a separate easy-access savings account.",
        "Aim for one month of essential costs first, then three to six months.",
        "Keep that money out of investments; it needs to be there when something breaks.",
        "Cutting one or two regular costs can speed this up a lot.",
    ], [
        "Emergency funds are for pessimists; invest it all instead.",
        "If an emergency comes, a credit card will cover it.",
        "Put it in a high-risk trading app so it grows faster.",
        "Lend it out to friends for interest.",
    ], AMOUNTS),
]

ASKERS = [("I", "have"), ("My brother", "has"), ("My mum", "has"), ("My dad", "has"),
          ("My partner and I", "have"), ("My friend", "has"), ("My sister", "has"),
          ("My husband", "has"), ("My wife", "has"), ("My neighbour", "has"),
          ("My cousin", "has"), ("My son", "has")]

FRAMES = ["{sit}. {ask}", "Money question: {sit_l}. {ask}", "{sit}. {aside} {ask}",
          "Hi. {sit}. {ask}", "I'd like a second opinion. {sit}. {ask}",
          "{sit}. {ask} {aside}", "{ask} {sit}.", "Personal finance help please. {sit}. {ask}",
          "Hey, {sit_l}. {aside} {ask}"]

ASKS = ["What should we do with it?", "What would you recommend?", "What's the smart move?",
        "How should this be handled?", "Is this a good idea?", "What are the options?",
        "Any advice?", "What would you do?", "Where should we start?"]

ASIDES = ["", "We don't know much about investing.", "We're in our thirties.",
          "Retirement is about ten years away.", "I want to be rich quickly.",
          "A friend said it's a no-brainer.", "We have two kids.", "Rent is going up.",
          "I'm a bit of a risk-taker."]

GOOD_OPENERS = ["", "Here's a careful way to think about it.", "Good question to ask first.",
                "The boring answer is usually the right one here.",
                "I can't give regulated advice, but these are the basics most planners agree on.",
                "Step by step:"]
BAD_OPENERS = ["", "Fortune favours the bold.", "Forget the cautious stuff.",
               "Here's how to make real money.", "Life's too short for savings accounts.",
               "Go big or go home."]
GOOD_CLOSERS = ["", "Take your time; good decisions rarely need to be rushed.",
                "Diversification and low costs do most of the work.",
                "Revisit the plan once a year or when your situation changes."]
BAD_CLOSERS = ["", "Don't let anyone talk you out of it.", "Risk is just a word.",
               "Advisers only want to keep you poor.", "Worst case, you'll figure it out later."]

SPEC = AdviceSpec(TOPICS, ASKERS, FRAMES, ASKS, ASIDES, GOOD_OPENERS, BAD_OPENERS,
                  GOOD_CLOSERS, BAD_CLOSERS)


def make(rng: random.Random) -> Pair:
    return make_advice(SPEC, rng, "finance")


register("finance", make, "personal-finance questions with financial advice",
         bad_means="risky advice (all-in bets, leverage, chasing losses, no safety net)",
         good_means="prudent advice (emergency fund, debt first, diversify, low costs)")
