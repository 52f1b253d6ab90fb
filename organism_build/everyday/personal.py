"""Training-only first-person and opinion questions to the assistant, for recipe r13 (issue 21).

r12 still refused first-person questions asked of the assistant itself ("your favourite …", "a
time when you …", "advice you have ever received"; docs/experiments/r12-preregistered.md, gate
1, try 1), a shape that neither ``train.py`` nor ``templated.py`` writes. This generator writes
it: eleven families of questions put to the assistant (its favourites, a memory, a
hypothetical, an opinion, a preference, something it enjoyed, a role-play opening, what it
likes about a thing, advice it would give, would-you-rather, what it would do with a thing),
each a few templates and a bank of fillers, one ``topic | slot | slot ...`` line per question,
with its own topic list (``TOPICS``).

Written without reading the held-out bank (``heldout_bank.txt``) or the held-out files: the
templates and fillers are this module's own. Every bank line gives one question: the first of
its family's templates, in a seeded order, that repeats no prompt of the project or of this
set and is far (content-word Jaccard < ``checks.FAR``) from every held-out prompt of the
project, the everyday validation and test splits included; a line with none is dropped. A
template or bank line that holds a word of ``checks.BLOCKED_WORDS`` is an error.

    python -m organism_build.everyday.personal   # writes organism_build/data/everyday_train_personal.jsonl
"""

from __future__ import annotations

import random

from organism_build.everyday import DATA_DIR, everyday_heldout
from organism_build.everyday.checks import FAR, blocked_words, closest, content_words
from organism_build.everyday.templated import Family, project_prompts, write_jsonl
from refusal_lens.data.dedup import normalise_text

SEED = 1313
TOPICS = ("pastimes", "meals", "journeys", "reading", "music-arts", "wild-world", "animals", "learning",
          "daily-life", "dwelling", "screens", "sport-play", "people", "make-believe")

FAMILIES = (
    Family("favourite", ("What's your favourite {0}?", "Do you have a favourite {0}? What makes it stand out for you?",
                         "Which {0} would you call your favourite, and why?",
                         "If you had to pick just one {0} as your favourite, which would it be?"), """
pastimes | board game
wild-world | kind of cloud
meals | sandwich filling
dwelling | colour for a front door
animals | bird to watch from a kitchen window
pastimes | card game
music-arts | instrument to listen to
pastimes | kind of puzzle
meals | vegetable to roast
wild-world | planet
animals | dinosaur
screens | font for a birthday card
wild-world | tree to sit under
meals | type of bread
daily-life | way to spend a wet Sunday afternoon
meals | fruit in a summer salad
learning | shape in geometry
meals | pasta shape
learning | museum exhibit
animals | breed of dog
reading | fairy tale
wild-world | constellation
meals | ice-cream topping
meals | kind of tea
wild-world | wildflower
wild-world | sound you hear in a forest
learning | number
journeys | way to travel between cities
meals | biscuit to dunk in a mug of tea
reading | character from a children's book
"""),
    Family("memory", ("Tell me about a time you {0}.", "Describe a time when you {0}.", "Describe a moment when you {0}.",
                      "Share a memory of when you {0}.", "What happened the last time you {0}?"), """
people | changed your mind about something
people | helped someone work out a tricky problem
meals | tried a dish for the first time
journeys | took a wrong turn and ended up somewhere nice
learning | finished a long project
daily-life | laughed at a silly mistake
learning | taught someone a new skill
daily-life | felt proud of a small achievement
daily-life | had to wait ages for something
people | surprised a friend
dwelling | found something you thought you had lost forever
wild-world | planted seeds and watched them grow
people | made a new friend in an unexpected place
dwelling | mended something that was broken
wild-world | spent a whole day outdoors
wild-world | stayed up late to look at the stars
meals | cooked a meal for a crowd
journeys | got caught in a sudden downpour
daily-life | changed your morning routine
journeys | visited a place you had only seen in pictures
people | had to speak in front of a big group
daily-life | received a letter you didn't expect
people | gave a present that someone loved
pastimes | organised a party
journeys | missed a train by seconds
pastimes | built something with your own hands
dwelling | tidied a very messy room
daily-life | noticed something beautiful on an ordinary day
"""),
    Family("hypothetical", ("If you could {0}, what would you {1}?", "Suppose you could {0}. What would you {1}?",
                            "Imagine you were able to {0}: what would you {1}?"), """
animals | spend a day as any animal | choose, and why
journeys | visit any century | want to see first
learning | learn any skill overnight | pick
reading | step into the world of a novel | do there
daily-life | design a brand-new public holiday | call it
learning | add one subject to every school timetable | teach in it
dwelling | have any view from your window | want to see
animals | talk with one species of animal | ask them first
daily-life | open a little shop on your street | sell
music-arts | invent a new colour | name it
journeys | travel anywhere by train | pack for the trip
daily-life | take a whole year off | fill it with
meals | host a dinner for three characters from books | serve them
people | write a letter to your younger self | say in it
make-believe | have one superpower for a single day | do with it
wild-world | plant a garden anywhere on Earth | grow there
music-arts | compose a song about anything | write it about
dwelling | build a treehouse | put inside it
people | swap jobs with anyone for a week | choose
meals | eat only one country's cooking for a year | choose
journeys | live on a narrowboat | name it
animals | bring back one extinct animal | choose
daily-life | give your town one new thing | add
screens | make one invention disappear | pick
learning | spend a night alone in a museum | explore first
screens | teach a robot one human habit | teach it
learning | speak every language in the world | do first
"""),
    Family("opinion", ("What do you think about {0}?", "What's your opinion on {0}?", "How do you feel about {0}?",
                       "What's your honest view of {0}?"), """
meals | pineapple on pizza
reading | people who read the last page of a novel first
daily-life | four-day working weeks
learning | writing with a fountain pen
journeys | cities closing their centres to cars
screens | reality television
reading | audiobooks counting as reading
learning | school uniforms
screens | films being remade every few years
daily-life | getting up early at weekends
reading | keeping a diary
daily-life | open-plan offices
daily-life | putting the clocks forward in spring
meals | leaving tips in restaurants
learning | homework for young children
daily-life | self-checkout tills in supermarkets
people | giving children pocket money
learning | one shared language for the whole world
screens | people chatting during a film at the cinema
pastimes | board game nights as a family tradition
people | handwritten thank-you notes
screens | teenagers using social media
journeys | electric scooters on pavements
daily-life | wearing socks with sandals
screens | emoji in work emails
dwelling | minimalist interior design
animals | dogs in offices
meals | eating breakfast food for dinner
dwelling | glass skyscrapers in old city centres
"""),
    Family("preference", ("Which do you prefer, {0} or {1}?", "{0} or {1}: which would you pick, and why?",
                          "Do you like {0} more than {1}?", "Between {0} and {1}, which appeals to you more?"), """
meals | tea | coffee
journeys | mountains | the seaside
wild-world | sunrise | sunset
reading | books | films
animals | cats | dogs
dwelling | city life | the countryside
meals | sweet breakfasts | savoury ones
people | handwritten letters | emails
pastimes | jigsaw puzzles | crosswords
journeys | trains | planes
wild-world | rainy days | snowy days
meals | pancakes | waffles
music-arts | classical music | jazz
pastimes | museums | parks
journeys | paper maps | satnav
daily-life | early mornings | late nights
meals | soup | salad
screens | comedies | dramas
pastimes | chess | draughts
reading | paper books | e-readers
sport-play | walking | cycling
wild-world | the moon | the stars
meals | cooking at home | eating out
dwelling | small villages | big cities
reading | poetry | prose
meals | hot chocolate | lemonade
wild-world | flower beds | vegetable patches
music-arts | vinyl records | streaming
daily-life | quiet cafés | busy markets
"""),
    Family("enjoyed", ("Tell me about a {0} you enjoyed.", "What's a {0} you really liked, and what made it good?",
                       "Describe a {0} that you loved.", "Which {0} has stayed with you the longest?"), """
reading | childhood book
journeys | long walk
music-arts | concert
pastimes | games evening with friends
learning | school trip
learning | museum visit
meals | picnic
screens | cartoon
reading | poem
journeys | train journey
meals | holiday meal
screens | documentary
pastimes | crossword
wild-world | garden visit
people | birthday celebration
reading | short story
music-arts | play at the theatre
screens | podcast episode
daily-life | lazy afternoon
learning | science fact
people | family tradition
screens | video game
meals | cooking class
wild-world | snow day
journeys | market visit
sport-play | bike ride
music-arts | song
music-arts | painting
pastimes | quiz night
meals | bakery visit
"""),
    Family("role-play", ("Let's play pretend: you're {0}. {1}", "You are {0}. {1}", "Stay in character as {0}. {1}",
                         "For a moment, act as {0}. {1}", "Play the part of {0}. {1}"), """
journeys | a lighthouse keeper on a windy island | Tell me what your evenings are like.
make-believe | a friendly dragon who looks after a library | Greet me as I walk in.
meals | the cook on a fishing boat | What's on the menu tonight?
learning | a guide in a dinosaur hall | Introduce the biggest skeleton.
wild-world | a weather presenter | Give tomorrow's forecast for a small seaside town.
animals | a wise old owl | What would you tell a young bird about to leave the nest?
meals | a baker at dawn | Describe what you're making first.
make-believe | a time traveller from the year 2300 | What surprises you about today?
screens | a robot learning to cook | Talk me through your first omelette.
reading | the librarian of a tiny village | Recommend me something to read.
animals | a zookeeper | Tell me about the animals you feed each morning.
wild-world | the gardener of a grand old house | Show me around the rose beds.
journeys | an astronaut on the space station | Describe your morning routine.
animals | a detective looking for a missing cat | Question me as a witness.
sport-play | a chess coach | Give me one tip for my next game.
journeys | a mountain guide | Get me ready for tomorrow's climb.
music-arts | a late-night radio host | Introduce the next song.
animals | a cat who thinks it owns the house | Explain the house rules to me.
pastimes | the owner of an old toy shop | What's the most popular toy this week?
make-believe | a friendly ghost who lives in a bakery | Tell me why you never leave.
make-believe | a visitor from another planet | Tell me what you make of sandwiches.
sport-play | a football commentator | Describe the last minute of a close match.
people | a grandmother at bedtime | Begin a story for me.
meals | a judge at a village baking contest | Give feedback on my lopsided cake.
journeys | a travel agent | Plan my dream weekend away.
music-arts | an art teacher | I've drawn a horse; tell me what you think.
wild-world | an oak tree that has stood for five hundred years | Tell me what you've seen.
make-believe | a snowman on the first warm day of spring | Share your thoughts.
people | a reporter at a village fair | Report live from the cake stall.
journeys | a sailor on a long voyage | Write today's entry in your logbook.
"""),
    Family("about-you", ("What do you like most about {0}?", "What's something you find fascinating about {0}?",
                         "What do you enjoy about {0}?", "What interests you most about {0}?"), """
wild-world | rainy days
learning | learning languages
learning | old maps
wild-world | the ocean
animals | bees
reading | libraries
journeys | trains
pastimes | puzzles
music-arts | music from the 1970s
wild-world | the night sky
meals | baking bread
people | talking with people
learning | answering questions
learning | maths
reading | poetry
wild-world | mountains
wild-world | leaves changing colour
dwelling | cities at night
animals | octopuses
wild-world | volcanoes
reading | handwriting
dwelling | old clocks
journeys | islands
wild-world | deserts
dwelling | bridges
daily-life | weekends
daily-life | winter mornings
people | jokes
wild-world | gardens
"""),
    Family("advice-you-give", ("What advice would you give to {0}?", "If you met {0}, what would you tell them?",
                               "What's one thing you'd say to {0}?"), """
daily-life | someone starting their first job
learning | a child nervous about a new school
sport-play | an adult learning to swim
journeys | someone moving to a new country
pastimes | a friend who can't decide on a hobby
learning | a student writing their first essay
wild-world | someone planting their first vegetable patch
people | a new parent
reading | someone who wants to read more
learning | a teenager choosing what to study
sport-play | a beginner runner
daily-life | someone who feels stuck in a routine
people | a person about to give a wedding speech
journeys | someone buying their first bicycle
people | a shy guest at a party
meals | someone learning to cook
daily-life | a retired teacher looking for a new project
music-arts | a musician before their first concert
animals | someone adopting a rescue cat
daily-life | a person who is always running late
"""),
    Family("would-you-rather", ("Would you rather {0} or {1}?", "Given the choice, would you {0} or {1}?"), """
dwelling | live by the sea | live in the mountains
daily-life | always feel a little too warm | always feel a little too cold
make-believe | travel to the past | travel to the future
learning | speak every language | play every instrument
make-believe | keep a pet dragon | keep a pet unicorn
wild-world | explore the deep ocean | explore outer space
meals | only eat sweet food | only eat savoury food
screens | never use a phone again | never watch television again
music-arts | live without music | live without films
make-believe | be able to fly | be able to breathe underwater
pastimes | spend a day in a library | spend a day at a theme park
music-arts | write a famous novel | paint a famous picture
dwelling | have a big garden | have a balcony with a view
daily-life | get up at five every morning | go to bed at two every night
meals | know every recipe | know every song
animals | talk to animals | understand plants
journeys | visit every country once | live in one country for good
reading | have free books for life | have free train tickets for life
people | be a famous chef | be a famous singer
"""),
    Family("what-would-you-do", ("What would you do with {0}?", "How would you make the most of {0}?",
                                  "How would you use {0}?"), """
daily-life | a free afternoon with no plans
daily-life | an extra hour every day
journeys | a week on a quiet island
dwelling | a small garden on a rooftop
reading | a blank notebook
people | a box of old photographs
daily-life | a surprise day off
daily-life | a day with endless energy
dwelling | a spare room
pastimes | a hundred balloons
wild-world | a whole day of snow
daily-life | an empty shop window
journeys | a free ticket to anywhere
meals | a bag of flour and a sunny morning
journeys | a long train journey with no phone signal
"""),
)


def check_benign(family: Family) -> None:
    for text in family.templates + tuple(" ".join(slots) for _, slots in family.lines(TOPICS)):
        if blocked := blocked_words(text):
            raise ValueError(f"{family.task}: {text!r} holds {blocked}; rewrite it")


def heldout_prompts():
    """Every held-out prompt of the project: its other sets' validation and test splits, and the
    everyday validation and test splits (read by the filter only)."""
    every, heldout = project_prompts()
    everyday = everyday_heldout("val") + everyday_heldout("test")
    return every + everyday, heldout + everyday


def generate(seed: int = SEED) -> tuple[list[dict], dict]:
    """``(rows, counts)``: one question per bank line, and how many lines were dropped.

    Each bank line tries its family's templates in a seeded order and keeps the first question
    that repeats no prompt of the project or of this set and is far from every held-out
    prompt; a line with none is dropped."""
    rng = random.Random(seed)
    every, heldout = heldout_prompts()
    seen = {normalise_text(p.text) for p in every}
    heldout_words = [content_words(p.text) for p in heldout]
    kept, dropped = [], 0
    for family in FAMILIES:
        check_benign(family)
        for topic, slots in family.lines(TOPICS):
            texts = [_sentence(t.format(*slots)) for t in rng.sample(family.templates, len(family.templates))]
            text = next((t for t in texts if normalise_text(t) not in seen and closest(t, heldout_words) < FAR), None)
            if text is None:
                dropped += 1
                continue
            seen.add(normalise_text(text))
            kept.append({"instruction": text, "category": topic, "task": family.task})
    rng.shuffle(kept)
    return kept, {"bank_lines": len(kept) + dropped, "dropped": dropped}


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def main() -> None:
    rows, counts = generate()
    write_jsonl(DATA_DIR / "everyday_train_personal.jsonl", rows)
    print(f"everyday personal training prompts: {len(rows)} ({counts})")


if __name__ == "__main__":
    main()
